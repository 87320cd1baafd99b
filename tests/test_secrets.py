"""No secret in any artifact: every file a run writes is searched for the keys and URL credentials it used."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway_helpers import ServerThread
from stillwatch.cli import main
from stillwatch.redact import MASK, command_line, redact, redact_argv, redact_text, redact_url

URL_PASSWORD = "url-password-7f3a9"
WATERMARK = "watermark-secret-for-the-secrets-test"


@pytest.fixture(scope="module")
def untrained(untrained_tiny: Path) -> Path:
    return untrained_tiny


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run the CLI in process exactly as a shell would (sys.argv included); returns stdout + stderr."""
    monkeypatch.setattr(sys, "argv", ["stillwatch", *args])
    try:
        main(list(args))
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr()
    out = capsys.readouterr()
    return out.out + out.err


def test_redaction_masks_keys_and_url_credentials() -> None:
    argv = ["distill", "--api-key", "sk-live-1", "--upstream-api-key=sk-live-2", "--endpoint",
            "https://me:pw-3@host/v1?api_key=sk-4&x=1", "--watermark-key-file", "k.txt", "--max-tokens", "5"]
    line = command_line(argv, program="stillwatch")
    for secret in ("sk-live-1", "sk-live-2", "pw-3", "sk-4"):
        assert secret not in line
    assert "--watermark-key-file k.txt" in line and "--max-tokens 5" in line and "x=1" in line
    assert redact_argv(["--api-key", "k"]) == ["--api-key", MASK]
    assert redact_text("stillwatch eval --api-key sk-9 --n 3") == f"stillwatch eval --api-key {MASK} --n 3"
    assert redact_url("redis://:pw@127.0.0.1:6379/0") == f"redis://:{MASK}@127.0.0.1:6379/0"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert redact({"a": ["Bearer sk-5", 3], "b": "sk-env-6"}, ["sk-env-6"]) == {"a": [f"Bearer {MASK}", 3], "b": MASK}


def test_no_key_in_any_artifact_of_harvest_distill_eval_prove(untrained: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    from stillwatch.guard.accounts import AccountStore
    from stillwatch.guard.app import create_app
    from stillwatch.guard.db import make_engine, upgrade
    from stillwatch.guard.settings import GuardSettings

    db = f"sqlite:///{tmp_path / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    _, key = AccountStore(engine).create_key("distiller")
    engine.dispose()
    (tmp_path / "wm.key").write_text(WATERMARK + "\n")
    settings = GuardSettings(teacher=untrained, db_url=db, watermark_key=WATERMARK)
    logs = []
    with ServerThread(create_app(settings)) as server:
        store = tmp_path / "store.db"
        logs.append(cli(monkeypatch, capsys, "harvest", "--endpoint", server.base, "--api-key", key, "--tokenizer",
                        str(untrained), "--task", "add", "--n", "3", "--max-tokens", "8", "--out", str(store),
                        "--no-progress"))
        # sft never calls the endpoint, so its URL may carry credentials that must not reach the card
        endpoint = f"http://user:{URL_PASSWORD}@127.0.0.1:9/v1"
        logs.append(cli(monkeypatch, capsys, "distill", "--data", str(store), "--out", str(tmp_path / "student"),
                        "--preset", "tiny", "--loss", "sft", "--steps", "2", "--batch-size", "2", "--endpoint",
                        endpoint, "--api-key", key))
        logs.append(cli(monkeypatch, capsys, "eval", "--endpoint", server.base, "--api-key", key, "--task", "add",
                        "--n", "2", "--json", str(tmp_path / "eval.json")))
        logs.append(cli(monkeypatch, capsys, "prove", "--evidence", str(store), "--suspect-endpoint", server.base,
                        f"--api-key={key}", "--watermark-key-file", str(tmp_path / "wm.key"), "--tokenizer",
                        str(untrained), "--max-prompts", "2", "--samples-per-prompt", "1", "--out",
                        str(tmp_path / "report")))
    card = (tmp_path / "student" / "stillwatch_card.json").read_text()
    assert "--api-key" in card and MASK in card  # the command is recorded, its secrets are not
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "report.json" for p in written) and (tmp_path / "eval.json").is_file()
    for secret in (key, URL_PASSWORD, WATERMARK):
        for path in written:
            if path.name == "wm.key":
                continue
            assert secret.encode() not in path.read_bytes(), f"{secret[:6]}... found in {path}"
        for log in logs:
            assert secret not in log
