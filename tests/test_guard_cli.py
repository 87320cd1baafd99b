"""The CLI contract of `stillwatch keys`, `accounts` and `audit`: stdout, stderr and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guard_support import run_cli as _run
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.db import make_engine


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stillwatch", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=60)




def test_keys_create_prints_only_the_key(tmp_path: Path) -> None:
    """A real subprocess: scripts do `KEY=$(stillwatch keys create --account NAME)`."""
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    done = _cli("keys", "create", "--account", "alice", "--db", db)
    assert done.returncode == 0, done.stderr
    key = done.stdout
    assert key.endswith("\n") and key.count("\n") == 1
    key = key.strip()
    assert key.startswith("sw-") and key not in done.stderr
    principal = AccountStore(make_engine(db)).authenticate(key)
    assert principal.account_name == "alice" and principal.key_id in done.stderr

    bad = _cli("accounts", "block", "nobody", "--reason", "x", "--db", db)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "nobody" in bad.stderr and "Traceback" not in bad.stderr


def test_default_db_is_the_serve_default(tmp_path: Path) -> None:
    """Without --db: STILLWATCH_DB, the same variable `stillwatch serve` reads."""
    db = f"sqlite:///{tmp_path / 'env.db'}"
    done = _cli("keys", "create", "--account", "bob", env={"STILLWATCH_DB": db}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert AccountStore(make_engine(db)).authenticate(done.stdout.strip()).account_name == "bob"
    env = {k: v for k, v in os.environ.items() if k != "STILLWATCH_DB"}
    done = subprocess.run([sys.executable, "-m", "stillwatch", "keys", "create", "--account", "carol"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "stillwatch.db").is_file()  # GuardSettings' default, relative to the working directory


def test_accounts_and_keys_commands(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    code, key, _ = _run(capsys, "keys", "create", "--account", "alice", "--db", db)
    assert code == 0
    key = key.strip()
    store = AccountStore(make_engine(db))
    key_id = store.authenticate(key).key_id

    assert _run(capsys, "accounts", "block", "alice", "--reason", "harvesting the teacher", "--db", db)[0] == 0
    principal = store.authenticate(key)
    assert principal.blocked and principal.block_reason == "harvesting the teacher"
    code, out, _ = _run(capsys, "accounts", "list", "--json", "--db", db)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and rows[0]["name"] == "alice" and rows[0]["blocked"] is True
    assert _run(capsys, "accounts", "unblock", "alice", "--db", db)[0] == 0
    assert not store.authenticate(key).blocked
    code, out, _ = _run(capsys, "accounts", "list", "--db", db)
    assert code == 0 and "alice" in out

    assert _run(capsys, "accounts", "degrade", "alice", "--db", db)[0] == 0
    assert store.authenticate(key).degraded
    assert _run(capsys, "accounts", "undegrade", "alice", "--db", db)[0] == 0
    assert not store.authenticate(key).degraded

    code, out, _ = _run(capsys, "keys", "list", "--json", "--db", db)
    assert code == 0 and json.loads(out)["key_id"] == key_id and key not in out
    assert _run(capsys, "keys", "revoke", key_id, "--db", db)[0] == 0
    assert json.loads(_run(capsys, "keys", "list", "--json", "--db", db)[1])["active"] is False

    code, out, _ = _run(capsys, "accounts", "usage", "alice", "--json", "--db", db)
    assert code == 0 and json.loads(out)["requests"] == 0
    code, out, _ = _run(capsys, "audit", "--account", "alice", "--limit", "5", "--db", db)
    assert code == 0


@pytest.mark.parametrize("args", [
    ["accounts", "block", "nobody", "--reason", "x"],
    ["accounts", "unblock", "nobody"],
    ["accounts", "degrade", "nobody"],
    ["accounts", "undegrade", "nobody"],
    ["accounts", "usage", "nobody"],
    ["audit", "--account", "nobody"],
    ["keys", "list", "--account", "nobody"],
    ["keys", "revoke", "ffffffffffff"],
    ["accounts", "block", "alice"],  # --reason is required
    ["keys", "create", "--account", "two words"],
])
def test_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str]) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    assert _run(capsys, "accounts", "create", "alice", "--db", db)[0] == 0
    code, out, err = _run(capsys, *args, "--db", db)
    assert code == 2 and out == ""
    assert err.startswith("stillwatch: error:") and err.count("\n") == 1
