"""The audit log: one durable record per request, written with group commit.

`await audit.record(entry)` returns only once the transaction holding the entry is committed (fsynced on
SQLite), so the gateway can send a response's last byte knowing its record survives a SIGKILL. One writer
task drains the queue and writes everything waiting in one transaction: under load, one commit carries many
records, so durability costs one fsync per batch rather than one per request.

The log is tamper-evident: each record stores `prev_hash`, the `record_hash` of the record before it, and its
own `record_hash`, SHA-256 over its canonical fields (`canonical`) and `prev_hash`. The writer computes them
inside the batch's one transaction. Texts are covered through their SHA-256 columns, since retention blanks
the texts by design; `verify_chain` also checks any text still present against its hash. There is one chain
per database, not one per replica: on PostgreSQL the writer takes a transaction-level advisory lock before it
reads the chain's tail, so replicas append one batch at a time (SQLite's BEGIN IMMEDIATE already does this).
A per-replica chain would need no lock, but then deleting a replica's whole chain, or a record at the end of
one, leaves nothing to notice it; one chain costs one short lock per batch, not per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from sqlalchemy import Connection, Engine, bindparam, insert, or_, select, text, update

from stillwatch.guard.accounts import UnknownAccount
from stillwatch.guard.db import write_transaction
from stillwatch.guard.tables import Account, AuditRecord, utcnow

log = logging.getLogger(__name__)
_STOP = object()
PURGE_EVERY_S = 3600.0
GENESIS = "0" * 64  # the prev_hash of the first chained record
_CHAIN_LOCK = 0x5717_A0D1  # pg_advisory_xact_lock key of the chain's tail
# The fields a record's hash covers, in order; the texts through their hashes (retention blanks texts).
CHAINED_FIELDS = ("created_at", "request_id", "account_id", "key_id", "endpoint", "params", "prompt_sha256",
                  "completion_sha256", "prompt_tokens", "completion_tokens", "latency_ms", "status", "decision",
                  "error_code", "client_addr", "user_agent")
USER_AGENT_CHARS = 200


def sha256_text(text: str | None) -> str | None:
    """SHA-256 (hex) of a text, or None for no text."""
    if text is None:
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _storable(text: str | None) -> str | None:
    # Prompts are hostile: lone surrogates cannot be encoded and PostgreSQL refuses NUL in text.
    if text is None:
        return None
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def canonical(row: Any, prev_hash: str) -> bytes:
    """The bytes a record's hash is taken over: its chained fields and `prev_hash`, as canonical JSON."""
    values: list[Any] = []
    for name in CHAINED_FIELDS:
        value = row[name]
        if name == "created_at":
            value = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
        elif name == "latency_ms":
            value = repr(float(value))  # a float's shortest repr survives every database's round trip
        values.append(value)
    return json.dumps([prev_hash, *values], sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=str).encode("ascii")


def chain_hash(row: Any, prev_hash: str) -> str:
    """SHA-256 (hex) of `canonical(row, prev_hash)`: the record_hash the chain stores."""
    return hashlib.sha256(canonical(row, prev_hash)).hexdigest()


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)  # e.g. chat messages


@dataclass
class AuditEntry:
    """What one request was: who, the endpoint, sampling params, prompt and completion, counts, outcome."""

    account_id: int | None = None
    key_id: str | None = None
    endpoint: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    prompt: Any = None  # text, or chat messages (stored as JSON)
    completion: Any = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    status: int = 200
    decision: str = "allow"
    error_code: str | None = None
    request_id: str | None = None
    client_addr: str | None = None
    user_agent: str | None = None
    time: datetime = field(default_factory=utcnow)
    # Rejected requests keep only this many characters of their prompt (the hash covers all of it): one key
    # sending megabyte prompts that are refused must not fill the disk.
    prompt_limit: int | None = None

    @property
    def prompt_sha256(self) -> str | None:
        """SHA-256 of the whole prompt text: kept after retention has blanked (or a limit cut) the text."""
        return sha256_text(_as_text(self.prompt))

    @property
    def completion_sha256(self) -> str | None:
        """SHA-256 of the completion text."""
        return sha256_text(_as_text(self.completion))

    def row(self, store_prompts: bool = True) -> dict[str, Any]:
        """The audit_records row for this entry (prompt text only if `store_prompts`); the audit writer's
        thread builds it, so that serialising and hashing a big prompt never runs on the event loop."""
        prompt, completion = _as_text(self.prompt), _as_text(self.completion)
        kept = prompt[:self.prompt_limit] if prompt is not None and self.prompt_limit is not None else prompt
        return {
            "created_at": self.time, "request_id": self.request_id, "account_id": self.account_id,
            "key_id": self.key_id, "endpoint": self.endpoint[:100],
            # A JSON round trip: only plain values reach the database, whatever the caller passed.
            "params": json.loads(json.dumps(self.params or {}, default=str)),
            "prompt": _storable(kept) if store_prompts else None, "prompt_sha256": sha256_text(prompt),
            "completion": _storable(completion), "completion_sha256": sha256_text(completion),
            "prompt_tokens": int(self.prompt_tokens), "completion_tokens": int(self.completion_tokens),
            "latency_ms": float(self.latency_ms), "status": int(self.status), "decision": self.decision[:32],
            "error_code": self.error_code[:64] if self.error_code else None,
            "client_addr": _storable(self.client_addr[:64]) if self.client_addr else None,
            "user_agent": _storable(self.user_agent[:USER_AGENT_CHARS]) if self.user_agent else None,
        }


class AuditLog:
    """Durable, batched audit records: `await record(entry)` returns after the commit that holds it."""

    def __init__(self, engine: Engine, settings: Any = None) -> None:
        self.engine = engine
        self.store_prompts = bool(getattr(settings, "store_prompts", True))
        self.prompt_retention_days = int(getattr(settings, "prompt_retention_days", 30) or 0)
        self.completion_retention_days = int(getattr(settings, "completion_retention_days", 0) or 0)
        self.batch_max = max(1, int(getattr(settings, "audit_batch_max", 512) or 512))
        self._queue: asyncio.Queue | None = None
        self._writer: asyncio.Task | None = None
        self._purger: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0  # commits so far; records / batches = the group-commit factor
        self.records = 0
        # Called with the seconds each committed record waited for its commit (the gateway's metrics).
        self.on_commit: Callable[[float], None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the writer (and the hourly retention purge) on the running event loop."""
        if self._writer is not None:
            return
        self._queue = asyncio.Queue()
        # One thread: the database work of the log never competes with itself, and stays off the event loop.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stillwatch-audit")
        self._writer = asyncio.create_task(self._write_loop(), name="stillwatch-audit-writer")
        if self.prompt_retention_days > 0 or self.completion_retention_days > 0:
            # Once now (a gateway that restarts daily still purges), then hourly.
            await asyncio.get_running_loop().run_in_executor(self._executor, self._safe_purge)
            self._purger = asyncio.create_task(self._purge_loop(), name="stillwatch-audit-purge")

    async def stop(self) -> None:
        """Write everything queued, then stop the writer."""
        if self._writer is None:
            return
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
        assert self._queue is not None
        await self._queue.put(_STOP)
        await self._writer
        self._executor.shutdown(wait=True)  # type: ignore[union-attr]
        self._writer = self._purger = self._queue = self._executor = None

    @property
    def running(self) -> bool:
        """Whether the writer has been started (by the app's lifespan, or a first record)."""
        return self._writer is not None

    async def __aenter__(self) -> AuditLog:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- writing --------------------------------------------------------------------------------------
    async def record(self, entry: AuditEntry) -> None:
        """Queue `entry` and return once it is committed; raises if its write failed."""
        if self._writer is None:
            await self.start()
        future = asyncio.get_running_loop().create_future()
        queued = time.perf_counter()
        await self._queue.put((entry, future))  # type: ignore[union-attr]
        # shield: a client that hangs up must not cancel the write, only its own wait for it.
        await asyncio.shield(future)
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - queued)

    def queue_depth(self) -> int:
        """Records waiting for the writer."""
        return self._queue.qsize() if self._queue is not None else 0

    async def _write_loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            stopping = any(item is _STOP for item in batch)
            items = [item for item in batch if item is not _STOP]
            if stopping:  # take everything still queued with us
                while not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is not _STOP:
                        items.append(item)
            if not items:
                continue
            try:
                errors = await loop.run_in_executor(self._executor, self._write_entries, [e for e, _ in items])
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one failure
                errors = [exc] * len(items)
            for (_, future), error in zip(items, errors, strict=True):
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    def _write_entries(self, entries: list[AuditEntry]) -> list[BaseException | None]:
        """Build the rows (in the writer's thread) and insert them; an entry that cannot be built fails alone."""
        rows: list[dict[str, Any] | None] = []
        built: list[BaseException | None] = []
        for entry in entries:
            try:
                rows.append(entry.row(self.store_prompts))
                built.append(None)
            except Exception as exc:  # noqa: BLE001 - reported to its own request only
                rows.append(None)
                built.append(exc)
        good = [row for row in rows if row is not None]
        outcome = self._write(good) if good else []
        written = iter(outcome)
        return [error if row is None else next(written) for row, error in zip(rows, built)]

    def _write(self, rows: list[dict[str, Any]]) -> list[BaseException | None]:
        """Insert `rows` in one transaction; if that fails, row by row, so one bad row fails only itself."""
        try:
            with write_transaction(self.engine) as conn:
                prev = chain_tail(conn)
                for row in rows:
                    row["prev_hash"] = prev
                    row["record_hash"] = prev = chain_hash(row, prev)
                conn.execute(insert(AuditRecord), rows)
            self.batches += 1
            self.records += len(rows)
            return [None] * len(rows)
        except Exception as exc:  # noqa: BLE001 - reported to each waiting request below
            if len(rows) == 1:
                log.error("audit write failed: %s", type(exc).__name__)
                return [exc]
        return [self._write([row])[0] for row in rows]

    # --- retention ------------------------------------------------------------------------------------
    def purge(self, now: datetime | None = None) -> int:
        """Blank prompt (and completion) texts older than their retention; hashes and counts stay. Returns rows."""
        now = now or utcnow()
        changed = 0
        with write_transaction(self.engine) as conn:
            if self.prompt_retention_days > 0:
                cutoff = now - timedelta(days=self.prompt_retention_days)
                changed += conn.execute(
                    update(AuditRecord).where(AuditRecord.created_at < cutoff, AuditRecord.prompt.is_not(None))
                    .values(prompt=None, purged_at=now)).rowcount
            if self.completion_retention_days > 0:
                cutoff = now - timedelta(days=self.completion_retention_days)
                changed += conn.execute(
                    update(AuditRecord)
                    .where(AuditRecord.created_at < cutoff, AuditRecord.completion.is_not(None))
                    .values(completion=None, purged_at=now)).rowcount
        return changed

    def _safe_purge(self) -> None:
        try:
            self.purge()
        except Exception as exc:  # noqa: BLE001 - retention must never take the gateway down
            log.error("audit purge failed: %s", type(exc).__name__)

    async def _purge_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PURGE_EVERY_S)
            await loop.run_in_executor(self._executor, self._safe_purge)

    # --- reading --------------------------------------------------------------------------------------
    def query(self, account: str | None = None, since: datetime | None = None, limit: int = 100,
              key_id: str | None = None) -> list[dict[str, Any]]:
        """The newest `limit` records (newest first), of one account and/or since a time."""
        return query(self.engine, account=account, since=since, limit=limit, key_id=key_id)


def _record_dict(row: Any) -> dict[str, Any]:
    r = row._mapping
    return {
        "id": r["id"], "time": r["created_at"].isoformat(), "request_id": r["request_id"],
        "account": r["account_name"], "account_id": r["account_id"], "key_id": r["key_id"],
        "endpoint": r["endpoint"], "params": r["params"], "prompt": r["prompt"],
        "prompt_sha256": r["prompt_sha256"], "completion": r["completion"],
        "completion_sha256": r["completion_sha256"], "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"], "latency_ms": r["latency_ms"],
        "status": r["status"], "decision": r["decision"], "error_code": r["error_code"],
        "purged": r["purged_at"] is not None, "client_addr": r["client_addr"], "user_agent": r["user_agent"],
        "prev_hash": r["prev_hash"], "record_hash": r["record_hash"], "elicit": r["elicit"],
    }


def _select(engine: Engine, account: str | None, since: datetime | None, key_id: str | None):  # type: ignore[no-untyped-def]
    stmt = select(*AuditRecord.__table__.c, Account.name.label("account_name")).outerjoin(
        Account, Account.id == AuditRecord.account_id)
    if account is not None:
        if "\x00" in account:  # no account has one, and PostgreSQL refuses NUL in text
            raise UnknownAccount(f"no account named {account[:200]!r}")
        with engine.connect() as conn:
            account_id = conn.scalar(select(Account.id).where(Account.name == account))
        if account_id is None:
            raise UnknownAccount(f"no account named {account[:200]!r}")
        stmt = stmt.where(AuditRecord.account_id == account_id)
    if since is not None:
        stmt = stmt.where(AuditRecord.created_at >= since)
    if key_id is not None:
        stmt = stmt.where(AuditRecord.key_id == key_id)
    return stmt


def query(engine: Engine, account: str | None = None, since: datetime | None = None, limit: int = 100,
          key_id: str | None = None) -> list[dict[str, Any]]:
    """The newest `limit` audit records as dicts (newest first); UnknownAccount for an unknown name."""
    stmt = _select(engine, account, since, key_id).order_by(AuditRecord.id.desc()).limit(max(0, int(limit)))
    with engine.connect() as conn:
        return [_record_dict(row) for row in conn.execute(stmt).all()]


def served_page(engine: Engine, after_id: int, limit: int = 1000, account: str | None = None,
                since: datetime | None = None) -> list[dict[str, Any]]:
    """Up to `limit` records that served a completion, with id above `after_id`, oldest first."""
    stmt = _select(engine, account, since, None).where(
        or_(AuditRecord.completion.is_not(None), AuditRecord.completion_sha256.is_not(None)),
        AuditRecord.status < 400, AuditRecord.id > after_id).order_by(AuditRecord.id).limit(limit)
    with engine.connect() as conn:
        return [_record_dict(row) for row in conn.execute(stmt).all()]


def iter_served(engine: Engine, account: str | None = None, since: datetime | None = None,
                chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """Every record that served a completion (oldest first): what `prove` reads as "what went to whom"."""
    last = 0
    while True:
        rows = served_page(engine, last, chunk, account, since)
        if not rows:
            return
        yield from rows
        last = rows[-1]["id"]


def store_elicit(engine: Engine, scores: dict[int, dict[str, Any] | None]) -> None:
    """Keep each record's elicitation scores (not part of its hash: they can be recomputed, the record not)."""
    rows = [{"rid": rid, "scores": value} for rid, value in scores.items() if value is not None]
    if not rows:
        return
    stmt = update(AuditRecord).where(AuditRecord.id == bindparam("rid")).values(elicit=bindparam("scores"))
    with write_transaction(engine) as conn:
        conn.execute(stmt, rows)


def chain_tail(conn: Connection) -> str:
    """The newest record_hash, read under the chain's lock (held until `conn`'s transaction ends)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CHAIN_LOCK})
    tail = conn.scalar(select(AuditRecord.record_hash).where(AuditRecord.record_hash.is_not(None))
                       .order_by(AuditRecord.id.desc()).limit(1))
    return tail or GENESIS


@dataclass
class ChainReport:
    """What `verify_chain` found: records checked, records from before the chain, and the first break."""

    checked: int = 0
    unchained: int = 0
    broken_id: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the whole chain holds."""
        return self.broken_id is None


def verify_chain(engine: Engine, chunk: int = 2000) -> ChainReport:
    """Walk every audit record oldest first, recompute each hash, and stop at the first that does not hold."""
    report = ChainReport()
    expected: str | None = None  # None until the first chained record
    last = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(select(AuditRecord.__table__).where(AuditRecord.id > last)
                                .order_by(AuditRecord.id).limit(chunk)).all()
        if not rows:
            return report
        for row in rows:
            r = row._mapping
            last = r["id"]
            problem = _check_record(r, expected)
            if problem == "unchained":
                report.unchained += 1
                continue
            if problem is not None:
                report.broken_id, report.problem = r["id"], problem
                return report
            report.checked += 1
            expected = r["record_hash"]


def _check_record(r: Any, expected: str | None) -> str | None:
    if r["record_hash"] is None:
        # Records from before the chain existed come first; a record without a hash after them was tampered.
        return "unchained" if expected is None else "has no hash (the chain was cut here)"
    if expected is not None and r["prev_hash"] != expected:
        return "does not follow the record before it (a record was removed, inserted or reordered)"
    if expected is None and r["prev_hash"] != GENESIS:
        return "starts the chain but does not follow the genesis hash (records before it were removed)"
    if chain_hash(r, r["prev_hash"]) != r["record_hash"]:
        return "its fields no longer match its hash (the record was edited)"
    # Texts: a refused request keeps a cut prompt, and hostile text was made storable, so only clean ones.
    prompt = r["prompt"]
    if (prompt is not None and r["status"] < 400 and "\ufffd" not in prompt
            and sha256_text(prompt) != r["prompt_sha256"]):
        return "its prompt text no longer matches its prompt_sha256 (the text was edited)"
    completion = r["completion"]
    if completion is not None and "\ufffd" not in completion and sha256_text(completion) != r["completion_sha256"]:
        return "its completion text no longer matches its completion_sha256 (the text was edited)"
    return None
