"""The audit log's hash chain: every record chains the one before it, and `audit verify` finds an edit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from guard_support import run_cli as _run
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.audit import GENESIS, AuditEntry, AuditLog, chain_hash, verify_chain
from stillwatch.guard.db import make_engine, upgrade




async def _write(logs: list[AuditLog], account_id: int, count: int) -> None:
    for log in logs:
        await log.start()
    try:  # every log at once: batches of both writers interleave in the one file
        await asyncio.gather(*(logs[i % len(logs)].record(AuditEntry(
            account_id=account_id, key_id="abcdefabcdef", endpoint="/v1/chat/completions",
            params={"temperature": 0.5, "n": 1}, prompt=[{"role": "user", "content": f"question {i}"}],
            completion=f"answer {i}", prompt_tokens=3, completion_tokens=2, latency_ms=1.25 + i,
            client_addr="10.0.0.7", user_agent="test-agent")) for i in range(count)))
    finally:
        for log in logs:
            await log.stop()


@pytest.fixture()
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(url)
    upgrade(engine)
    account_id = AccountStore(engine).create_account("alice")["id"]
    # Two writers on one database (as two replicas): still one chain, and still group commit.
    logs = [AuditLog(engine), AuditLog(make_engine(url))]
    asyncio.run(_write(logs, account_id, 40))
    assert sum(log.batches for log in logs) < sum(log.records for log in logs) == 40
    engine.dispose()
    return url


def test_every_record_chains_the_one_before(db: str) -> None:
    engine = make_engine(db)
    with engine.connect() as conn:
        rows = [r._mapping for r in conn.exec_driver_sql("SELECT * FROM audit_records ORDER BY id").all()]
    assert rows[0]["prev_hash"] == GENESIS
    for before, row in zip(rows, rows[1:]):
        assert row["prev_hash"] == before["record_hash"]
    report = verify_chain(engine)
    assert report.ok and report.checked == 40 and report.unchained == 0


def test_verify_says_the_chain_holds(db: str, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(capsys, "audit", "verify", "--db", db)
    assert code == 0 and out.strip() == "audit chain holds: 40 records" and err == ""


@pytest.mark.parametrize("sql, problem", [
    ("UPDATE audit_records SET completion_tokens = 0 WHERE id = 17", "edited"),
    ("UPDATE audit_records SET client_addr = '10.9.9.9' WHERE id = 17", "edited"),
    ("UPDATE audit_records SET prompt = '[{\"role\": \"user\", \"content\": \"nothing\"}]' WHERE id = 17",
     "prompt text"),
    ("UPDATE audit_records SET completion = 'other' WHERE id = 17", "completion text"),
    ("DELETE FROM audit_records WHERE id = 16", "removed"),
    ("UPDATE audit_records SET record_hash = NULL WHERE id = 17", "no hash"),
])
def test_an_edited_record_is_found(db: str, capsys: pytest.CaptureFixture, sql: str, problem: str) -> None:
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        conn.execute(sql)
    code, out, err = _run(capsys, "audit", "verify", "--db", db)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("audit chain broken at record 17:") and problem in err


def test_a_rehashed_record_still_breaks_the_next_link(db: str, capsys: pytest.CaptureFixture) -> None:
    """Whoever edits a record and recomputes its hash must rewrite every later record too."""
    engine = make_engine(db)
    with engine.connect() as conn:
        row = dict(conn.exec_driver_sql("SELECT * FROM audit_records WHERE id = 5").one()._mapping)
    from stillwatch.guard.tables import AuditRecord
    from sqlalchemy import select

    with engine.connect() as conn:
        r = dict(conn.execute(select(AuditRecord.__table__).where(AuditRecord.id == 5)).one()._mapping)
    r["completion_tokens"] = 999
    forged = chain_hash(r, r["prev_hash"])
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE audit_records SET completion_tokens = 999, record_hash = ? WHERE id = 5", (forged,))
    assert row["id"] == 5
    report = verify_chain(engine)
    assert report.broken_id == 6 and "does not follow" in (report.problem or "")


def test_retention_keeps_the_chain(db: str) -> None:
    """Purging texts blanks them, but the hashes of the texts are what the chain covers."""
    from datetime import timedelta

    from stillwatch.guard.settings import GuardSettings
    from stillwatch.guard.tables import utcnow

    log = AuditLog(make_engine(db), GuardSettings(prompt_retention_days=1, completion_retention_days=1))
    assert log.purge(now=utcnow() + timedelta(days=2)) == 80
    assert verify_chain(log.engine).ok


def test_records_from_before_the_chain_are_counted_not_failed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO audit_records (created_at, endpoint, params, prompt_tokens, completion_tokens, latency_ms,"
            " status, decision) VALUES ('2026-01-01 00:00:00.000000', '/v1/completions', '{}', 0, 0, 0.0, 200,"
            " 'allow')")
    upgrade(engine)
    asyncio.run(_write([AuditLog(engine)], 1, 3))
    report = verify_chain(engine)
    assert report.ok and report.unchained == 1 and report.checked == 3
