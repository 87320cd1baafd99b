"""The guard's storage: migrations, keys (hashed, never logged), block/degrade, quotas, the audit log."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select, text

from guard_support import fresh_postgres
from stillwatch.errors import ConfigError
from stillwatch.guard.accounts import (
    AccountExists,
    AccountStore,
    BadAccountName,
    InvalidKey,
    UnknownAccount,
    UnknownKey,
    key_id_of,
)
from stillwatch.guard.audit import AuditEntry, AuditLog, iter_served, sha256_text
from stillwatch.guard.db import alembic_config, current_revision, make_engine, normalize_url, upgrade
from stillwatch.guard.quotas import QuotaExceeded, Quotas
from stillwatch.guard.settings import GuardSettings
from stillwatch.guard.tables import AuditRecord, Base, utcnow

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


@pytest.fixture()
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'guard.db'}"


@pytest.fixture()
def engine(db_url: str):
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _assert_schema_at_head(engine) -> None:
    assert current_revision(engine) == HEAD
    with engine.connect() as conn:
        # The migrations build exactly what the ORM tables declare.
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


# --- migrations -----------------------------------------------------------------------------------------
def test_upgrade_empty_sqlite(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    upgrade(db_url)  # by URL
    upgrade(engine)  # and again, by engine: a no-op
    _assert_schema_at_head(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: survives any process kill
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    with make_engine(db_url, "full").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    with pytest.raises(ConfigError):
        make_engine(db_url, "off")


def test_upgrade_empty_postgres() -> None:
    with fresh_postgres() as url:
        assert url.startswith("postgresql://")
        engine = make_engine(url)
        try:
            assert engine.dialect.driver == "psycopg"
            assert current_revision(engine) is None
            upgrade(engine)
            upgrade(url)
            _assert_schema_at_head(engine)
            store = AccountStore(engine)
            key_id, raw = store.create_key("pg-user")
            assert store.authenticate(raw).key_id == key_id
        finally:
            engine.dispose()


def test_urls() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigError):
        make_engine("mysql://u@h/db")
    with pytest.raises(ConfigError):
        make_engine("not a url")


# --- keys -----------------------------------------------------------------------------------------------
def test_keys_are_hashed_and_never_logged(db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)  # SQL and its parameters, all of it
    try:
        engine = make_engine(db_url)
        upgrade(engine)
        store = AccountStore(engine)
        keys = [store.create_key("alice")[1] for _ in range(3)]
        for raw in keys:
            assert store.authenticate(raw).account_name == "alice"
        with pytest.raises(InvalidKey) as info:
            store.authenticate(keys[0][:-2] + "xx")
        assert keys[0][:-2] not in str(info.value)
        store.revoke_key(key_id_of(keys[2]))
        engine.dispose()
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    assert "SELECT" in caplog.text  # the SQL log was on, so the check below means something
    files = [p for p in tmp_path.iterdir() if p.name.startswith("guard.db")]
    blob = b"".join(p.read_bytes() for p in files)
    for raw in keys:
        secret = raw.rsplit("-", 1)[-1] if raw.count("-") == 2 else raw.split("-", 2)[2]
        assert raw.encode() not in blob and secret.encode() not in blob
        assert raw not in caplog.text and secret not in caplog.text
    assert key_id_of(keys[0]).encode() in blob  # the public id is stored (so the file was really read)


def test_authenticate_refuses_bad_and_revoked_keys(engine) -> None:
    store = AccountStore(engine)
    key_id, raw = store.create_key("alice")
    other_id, other = store.create_key("bob")
    for bad in [None, "", "sw-", raw + "x", raw.replace("sw-", "sk-"), f"sw-{key_id}-{other.split('-', 2)[2]}",
                "sw-000000000000-" + "a" * 43]:
        with pytest.raises(InvalidKey):
            store.authenticate(bad)
    store.revoke_key(key_id)
    store.revoke_key(key_id)  # idempotent
    with pytest.raises(InvalidKey):
        store.authenticate(raw)
    assert store.authenticate(other).key_id == other_id
    with pytest.raises(UnknownKey):
        store.revoke_key("ffffffffffff")
    keys = {k["key_id"]: k for k in store.list_keys()}
    assert keys[key_id]["active"] is False and keys[other_id]["active"] is True
    assert all("hash" not in field for k in keys.values() for field in k)


def test_accounts_block_unblock_degrade_across_engines(db_url: str, engine) -> None:
    store = AccountStore(engine)
    replica = AccountStore(make_engine(db_url))  # another process's view of the same database
    keys = [store.create_key("alice")[1] for _ in range(2)]
    bob = store.create_key("bob")[1]
    assert not replica.authenticate(keys[0]).blocked
    store.block("alice", "distillation pattern")
    for raw in keys:  # every key of the account, at once, on the other engine too (no cache)
        principal = replica.authenticate(raw)
        assert principal.blocked and principal.block_reason == "distillation pattern"
    assert not replica.authenticate(bob).blocked
    replica.unblock("alice")
    assert not store.authenticate(keys[1]).blocked and store.authenticate(keys[1]).block_reason is None
    store.set_degraded("alice", True)
    assert replica.authenticate(keys[0]).degraded and not replica.authenticate(bob).degraded
    store.set_degraded("alice", False)
    assert not replica.authenticate(keys[0]).degraded
    accounts = {a["name"]: a for a in store.list_accounts()}
    assert accounts["alice"]["active_keys"] == 2 and accounts["bob"]["active_keys"] == 1
    with pytest.raises(UnknownAccount):
        store.block("nobody", "x")
    with pytest.raises(UnknownAccount):
        store.set_degraded("nobody", True)
    with pytest.raises(AccountExists):
        store.create_account("alice")
    with pytest.raises(BadAccountName):
        store.create_key("two words")


# --- quotas ---------------------------------------------------------------------------------------------
def _principal(store: AccountStore, account: str):
    return store.authenticate(store.create_key(account)[1])


def test_quotas_requests_per_account_and_key(engine, tmp_path: Path) -> None:
    quotas_file = tmp_path / "quotas.toml"
    quotas_file.write_text('[default]\nrequests = "5/minute"\nkey_requests = "3/minute"\n'
                           '[accounts.big]\nrequests = "50/minute"\nkey_requests = "unlimited"\n')
    quotas = Quotas("memory://", quotas_file)
    store = AccountStore(engine)
    first, second = _principal(store, "alice"), _principal(store, "alice")
    for _ in range(3):
        quotas.check_request(first)
    with pytest.raises(QuotaExceeded) as info:  # the key's own limit
        quotas.check_request(first)
    assert info.value.should_retry and 0 < info.value.retry_after <= 60
    quotas.check_request(second)
    quotas.check_request(second)
    with pytest.raises(QuotaExceeded):  # the account's limit, shared by both keys
        quotas.check_request(second)
    big = _principal(store, "big")
    for _ in range(20):
        quotas.check_request(big)  # the per-account override
    assert _principal(store, "carol") is not None
    quotas.check_request(_principal(store, "carol"))  # another account is not affected


def test_quotas_tokens(engine, tmp_path: Path) -> None:
    quotas_file = tmp_path / "quotas.toml"
    quotas_file.write_text('[default]\ntokens = "1000/minute"\nrequests = "unlimited"\n')
    quotas = Quotas("memory://", quotas_file)
    alice = _principal(AccountStore(engine), "alice")
    quotas.check_tokens(alice, 900)
    with pytest.raises(QuotaExceeded) as info:
        quotas.check_tokens(alice, 1001)  # can never fit: do not retry
    assert info.value.should_retry is False
    quotas.check_request(alice)
    quotas.charge_tokens(alice, 700)
    with pytest.raises(QuotaExceeded) as info:
        quotas.check_tokens(alice, 400)
    assert info.value.should_retry and info.value.retry_after > 0
    quotas.charge_tokens(alice, 5000)  # an overdraft never raises...
    with pytest.raises(QuotaExceeded):  # ...but the next request is refused
        quotas.check_request(alice)


def test_quotas_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    for content in ['[default]\nrequests = "many"\n', '[default]\nrequest = "5/minute"\n', "[oops]\n",
                    "not toml ["]:
        bad.write_text(content)
        with pytest.raises(ConfigError):
            Quotas("memory://", bad)
    with pytest.raises(ConfigError):
        Quotas("memory://", tmp_path / "missing.toml")


# --- audit ----------------------------------------------------------------------------------------------
def _entry(i: int, **kw) -> AuditEntry:
    base = dict(account_id=1, key_id="abc", endpoint="/v1/completions", params={"temperature": 0.5, "n": 1},
                prompt=f"add: {i}+1\n", completion=f"-> {i + 1}", prompt_tokens=5, completion_tokens=3,
                latency_ms=1.5, status=200, decision="allow")
    base.update(kw)
    return AuditEntry(**base)


def test_audit_group_commit_is_durable_on_return(db_url: str, engine) -> None:
    reader = make_engine(db_url)  # a separate connection pool: sees only committed rows

    async def run() -> AuditLog:
        log = AuditLog(engine, GuardSettings())
        async with log:
            await log.record(_entry(-1))
            with reader.connect() as conn:  # committed before record() returned
                assert conn.scalar(select(func.count()).select_from(AuditRecord)) == 1
            await asyncio.gather(*(log.record(_entry(i)) for i in range(300)))
            with reader.connect() as conn:
                assert conn.scalar(select(func.count()).select_from(AuditRecord)) == 301
        return log

    log = asyncio.run(run())
    assert log.records == 301
    assert log.batches <= 4  # 300 concurrent records went in a few transactions, not 300
    rows = log.query(limit=500)
    assert len(rows) == 301 and rows[0]["id"] > rows[-1]["id"]
    row = next(r for r in rows if r["prompt"] == "add: 7+1\n")
    assert row["completion"] == "-> 8" and row["params"] == {"temperature": 0.5, "n": 1}
    assert row["prompt_sha256"] == sha256_text("add: 7+1\n") and row["completion_sha256"] == sha256_text("-> 8")


def test_audit_hostile_text_and_stop_flushes(engine) -> None:
    async def run() -> None:
        log = AuditLog(engine, GuardSettings())
        await log.start()
        pending = [asyncio.create_task(log.record(_entry(i, prompt="nul\x00 surrogate\ud800 ' OR 1=1 --")))
                   for i in range(20)]
        await log.stop()  # drains the queue before it returns
        await asyncio.gather(*pending)

    asyncio.run(run())
    rows = AuditLog(engine).query(limit=100)
    assert len(rows) == 20
    assert rows[0]["prompt"].startswith("nul\ufffd surrogate") and rows[0]["prompt_sha256"]


def test_audit_retention_purge(engine) -> None:
    store = AccountStore(engine)
    alice = _principal(store, "alice")
    now = utcnow()

    async def write(settings: GuardSettings) -> AuditLog:
        log = AuditLog(engine, settings)
        async with log:
            await log.record(_entry(1, account_id=alice.account_id, time=now - timedelta(days=40)))
            await log.record(_entry(2, account_id=alice.account_id, time=now - timedelta(days=1)))
        return log

    asyncio.run(write(GuardSettings(prompt_retention_days=0)))  # 0: keep forever, no purge
    assert all(r["prompt"] for r in AuditLog(engine).query(account="alice"))
    log = AuditLog(engine, GuardSettings(prompt_retention_days=30, completion_retention_days=0))

    async def start_stop() -> None:
        async with log:  # start() purges once, at once
            pass

    asyncio.run(start_stop())
    old, new = sorted(log.query(account="alice"), key=lambda r: r["time"])
    assert old["prompt"] is None and new["prompt"] is not None
    assert log.purge(now) == 0  # nothing left to blank
    old, new = sorted(log.query(account="alice"), key=lambda r: r["time"])
    assert old["prompt"] is None and old["prompt_sha256"] == sha256_text("add: 1+1\n") and old["purged"]
    assert old["completion"] == "-> 2"  # kept as evidence (completion_retention_days = 0)
    assert old["prompt_tokens"] == 5 and old["completion_tokens"] == 3
    assert new["prompt"] == "add: 2+1\n" and not new["purged"]
    log = AuditLog(engine, GuardSettings(prompt_retention_days=30, completion_retention_days=10))
    assert log.purge(now) == 1
    assert sorted(log.query(account="alice"), key=lambda r: r["time"])[0]["completion"] is None
    # store_prompts=False keeps the hash only
    asyncio.run(write(GuardSettings(store_prompts=False, prompt_retention_days=0)))
    latest = log.query(account="alice", limit=1)[0]
    assert latest["prompt"] is None and latest["prompt_sha256"] == sha256_text("add: 2+1\n")
    usage = store.usage("alice")
    assert usage["requests"] == 4 and usage["prompt_tokens"] == 20 and usage["total_tokens"] == 32
    assert store.usage("alice", since=now - timedelta(days=2))["requests"] == 2
    served = list(iter_served(engine, account="alice", chunk=1))
    assert [r["id"] for r in served] == sorted(r["id"] for r in served) and len(served) == 4
    with pytest.raises(UnknownAccount):
        log.query(account="nobody")


def test_audit_record_survives_a_failed_neighbour(engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """One row the database refuses fails its own request only; the rest of the batch is committed."""
    async def run() -> list:
        log = AuditLog(engine, GuardSettings())
        async with log:
            bad = _entry(0)
            bad.endpoint = None  # NOT NULL violation in the database
            entries = [_entry(1), bad, _entry(2)]
            original = AuditEntry.row
            monkeypatch.setattr(AuditEntry, "row", lambda self, store=True: {**original(self, store),
                                                                            "endpoint": self.endpoint})
            return await asyncio.gather(*(log.record(e) for e in entries), return_exceptions=True)

    results = asyncio.run(run())
    assert results[0] is None and results[2] is None and isinstance(results[1], Exception)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_records")).scalar() == 2
