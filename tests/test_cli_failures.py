"""Every expected CLI failure is one line on stderr and exit code 2 (Ctrl-C: `interrupted`, 130), no traceback,
and a failed command leaves nothing behind that looks like a result: no empty store, no new database file."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from guard_support import free_port
from stillwatch.cli import main


@pytest.fixture(scope="module")
def untrained(untrained_tiny: Path) -> Path:
    return untrained_tiny


@pytest.fixture(scope="module")
def store(untrained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "store.db"
    main(["harvest", "--teacher", str(untrained), "--task", "add", "--n", "4", "--max-tokens", "8", "--out",
          str(path), "--no-progress"])
    return path


def fails(capsys: pytest.CaptureFixture, *args: str, code: int = 2) -> str:
    """Run the CLI; assert exit `code` with one error line on stderr and no traceback; return that line.
    (`harvest` says what it harvests first; that line is allowed.)"""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert exc.value.code == code, (args, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("harvest: ")]
    assert len(lines) == 1 and lines[0].startswith("stillwatch: error:"), (args, err)
    assert "Traceback" not in err
    return lines[0]


def test_bad_values_are_refused(capsys, store: Path, untrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    for flag, value, name in [("--max-new-tokens", "-5", "max_new_tokens"), ("--lr", "nan", "lr"),
                              ("--lr", "0", "lr"), ("--teacher-top-k", "-1", "teacher_top_k")]:
        line = fails(capsys, "distill", "--data", store, "--out", out, flag, value)
        assert name in line
    assert not out.exists()
    assert "alpha" in fails(capsys, "prove", "--evidence", store, "--suspect", untrained, "--alpha", "5")
    quotas = tmp_path / "quotas.toml"
    for text in ("alice = 5\n", "[accounts]\nalice = 5\n", "[default]\nrequests = 5\n"):
        quotas.write_text(text)
        fails(capsys, "serve", "--upstream", "http://127.0.0.1:9/v1", "--quotas", quotas, "--db",
              f"sqlite:///{tmp_path / 'g.db'}", "--port", free_port())


def test_prove_on_a_missing_database_creates_no_file(capsys, untrained: Path, tmp_path: Path) -> None:
    (tmp_path / "wm.key").write_text("a-watermark-secret\n")
    missing = tmp_path / "missing.db"
    line = fails(capsys, "prove", "--evidence", f"sqlite:///{missing}", "--suspect", untrained, "--tokenizer",
                 untrained, "--watermark-key-file", tmp_path / "wm.key", "--out", tmp_path / "report")
    assert "no database" in line and not missing.exists()


def test_corrupt_weights_and_unwritable_outputs(capsys, untrained: Path, store: Path, tmp_path: Path) -> None:
    import shutil

    for damage in (lambda b: b[: len(b) // 2], lambda b: b"garbage" * 50):
        broken = tmp_path / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(untrained, broken)
        weights = broken / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
        fails(capsys, "eval", "--model", broken, "--task", "add", "--n", "1")
        fails(capsys, "harvest", "--teacher", broken, "--task", "add", "--n", "1", "--out", tmp_path / "h.db")
        fails(capsys, "distill", "--data", store, "--out", tmp_path / "s", "--init", broken, "--steps", "1")
    assert not (tmp_path / "h.db").exists()
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    # checked before the evaluation runs, not after it
    assert "not a directory" in fails(capsys, "eval", "--model", untrained, "--task", "add", "--n", "1",
                                      "--json", afile / "eval.json")
    fails(capsys, "watermark", "keygen", "--out", afile / "wm.key")
    fails(capsys, "harvest", "export", store, "--out", afile / "x.jsonl")
    fails(capsys, "harvest", "--teacher", untrained, "--task", "add", "--n", "1", "--out", afile / "h.db")
    fails(capsys, "distill", "--data", store, "--out", afile / "s", "--steps", "1", "--preset", "tiny")
    fails(capsys, "prove", "--evidence", store, "--suspect", untrained, "--out", afile / "r")


def test_database_problems(capsys, tmp_path: Path) -> None:
    from stillwatch.guard.db import make_engine, upgrade

    missing = tmp_path / "missing.db"
    for command in (["keys", "list"], ["accounts", "list"], ["audit"], ["accounts", "usage", "bob"]):
        assert "no database" in fails(capsys, *command, "--db", f"sqlite:///{missing}")
    assert not missing.exists()  # read-only commands never create a database
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    fails(capsys, "keys", "list", "--db", f"sqlite:///{garbage}")
    fails(capsys, "keys", "create", "--account", "bob", "--db", f"sqlite:///{garbage}")
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    fails(capsys, "audit", "--db", f"sqlite:///{empty}")
    with sqlite3.connect(empty) as conn:  # read-only: it did not migrate either
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    future = tmp_path / "future.db"
    engine = make_engine(f"sqlite:///{future}")
    upgrade(engine)
    engine.dispose()
    with sqlite3.connect(future) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dcafe0042'")
    for command in (["keys", "list"], ["keys", "create", "--account", "bob"]):
        assert "f00dcafe0042" in fails(capsys, *command, "--db", f"sqlite:///{future}")
    port = free_port()  # nothing listens there: an unreachable PostgreSQL
    fails(capsys, "keys", "create", "--account", "bob", "--db", f"postgresql://u:pw@127.0.0.1:{port}/x")
    line = fails(capsys, "serve", "--upstream", "http://127.0.0.1:9/v1", "--db",
                 f"postgresql://u:pw@127.0.0.1:{port}/x", "--port", free_port())
    assert ":pw@" not in line


def test_serve_binds_before_it_says_serving(capsys, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--db", f"sqlite:///{tmp_path / 'g.db'}",
                  "--port", str(port)])
        err = capsys.readouterr().err
    assert exc.value.code == 2 and "serving" not in err and f"cannot bind 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_resume_refuses_another_configuration(capsys, store: Path, tmp_path: Path, monkeypatch) -> None:
    from stillwatch.distill.data import BatchMaker

    out = tmp_path / "student"
    args = ["distill", "--data", str(store), "--out", str(out), "--preset", "tiny", "--steps", "4",
            "--batch-size", "2", "--checkpoint-every", "2"]
    real_call = BatchMaker.__call__

    def dies_at_step_3(self, step, rank=0, world=1):  # type: ignore[no-untyped-def]
        if step == 3:
            raise KeyboardInterrupt
        return real_call(self, step, rank, world)

    monkeypatch.setattr(BatchMaker, "__call__", dies_at_step_3)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err  # the progress bar, then the one line
    assert exc.value.code == 130 and err.strip().splitlines()[-1] == "stillwatch: error: interrupted"
    monkeypatch.setattr(BatchMaker, "__call__", real_call)
    assert (out / "_run" / "checkpoint").exists()
    for change, named in [(["--preset", "student-tiny"], "preset"), (["--steps", "6"], "steps"),
                          (["--loss", "kd"], "loss"), (["--lr", "0.01"], "lr")]:
        flags = list(args)
        if change[0] in flags:
            flags[flags.index(change[0]) + 1] = change[1]
        else:
            flags += change
        line = fails(capsys, *flags)
        assert named in line and "unfinished run" in line, line
    main(args)  # the same settings resume
    card = json.loads((out / "stillwatch_card.json").read_text())
    assert card["train"]["resumed_from"] == 2


def _refusing_endpoint():  # type: ignore[no-untyped-def]
    """An endpoint that refuses every key (401), on a thread; yields its base URL."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def refuse(_):  # type: ignore[no-untyped-def]
        return JSONResponse({"error": {"message": "no", "type": "invalid_request_error", "code": "invalid_api_key"}},
                            status_code=401)

    port = free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", refuse, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}/v1"


def test_a_failed_harvest_leaves_no_empty_store(capsys, tmp_path: Path) -> None:
    server, thread, base = _refusing_endpoint()
    try:
        out = tmp_path / "store.db"
        fails(capsys, "harvest", "--endpoint", base, "--api-key", "sk-wrong", "--task", "add", "--n", "3",
              "--out", out, "--no-progress")
        assert not out.exists() and not list(tmp_path.glob("store.db*"))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _sigint_as_in_a_terminal() -> None:
    """The child takes SIGINT as a terminal's foreground job does. A suite started in the background (`cmd &`
    in a script) has SIGINT ignored, which children inherit, and Python then installs no Ctrl-C handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_says_interrupted_and_keeps_what_was_done(untrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "store.db"
    proc = subprocess.Popen([sys.executable, "-m", "stillwatch", "harvest", "--teacher", str(untrained), "--task",
                             "add", "--n", "100000", "--max-tokens", "8", "--concurrency", "4", "--out", str(out),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_sigint_as_in_a_terminal)
    deadline = time.monotonic() + 240
    rows = 0
    while time.monotonic() < deadline and proc.poll() is None and rows == 0:
        time.sleep(0.5)
        if out.exists():
            try:
                with sqlite3.connect(out) as conn:
                    rows = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
            except sqlite3.Error:
                pass
    assert rows > 0, proc.stderr.read() if proc.poll() is not None else "no rows in time"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "stillwatch: error: interrupted" and "Traceback" not in err
    with sqlite3.connect(out) as conn:
        assert conn.execute("SELECT count(*) FROM samples").fetchone()[0] >= rows
