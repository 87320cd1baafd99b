"""The audit log: one durable record per request, written with group commit.

`await audit.record(entry)` returns only once the transaction holding the entry is committed (fsynced on
SQLite), so the gateway can send a response's last byte knowing its record survives a SIGKILL. One writer
task drains the queue and writes everything waiting in one transaction: under load, one commit carries many
records, so durability costs one fsync per batch rather than one per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterator

from sqlalchemy import Engine, insert, or_, select, update

from stillwatch.guard.accounts import UnknownAccount
from stillwatch.guard.db import write_transaction
from stillwatch.guard.tables import Account, AuditRecord, utcnow

log = logging.getLogger(__name__)
_STOP = object()
PURGE_EVERY_S = 3600.0


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
        await self._queue.put((entry, future))  # type: ignore[union-attr]
        # shield: a client that hangs up must not cancel the write, only its own wait for it.
        await asyncio.shield(future)

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
        written = iter(self._write(good) if good else [])
        return [error if row is None else next(written) for row, error in zip(rows, built)]

    def _write(self, rows: list[dict[str, Any]]) -> list[BaseException | None]:
        """Insert `rows` in one transaction; if that fails, row by row, so one bad row fails only itself."""
        try:
            with write_transaction(self.engine) as conn:
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
        "purged": r["purged_at"] is not None,
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


def iter_served(engine: Engine, account: str | None = None, since: datetime | None = None,
                chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """Every record that served a completion (oldest first): what `prove` reads as "what went to whom"."""
    base = _select(engine, account, since, None).where(
        or_(AuditRecord.completion.is_not(None), AuditRecord.completion_sha256.is_not(None)),
        AuditRecord.status < 400)
    last = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(base.where(AuditRecord.id > last).order_by(AuditRecord.id).limit(chunk)).all()
        if not rows:
            return
        for row in rows:
            yield _record_dict(row)
        last = rows[-1]._mapping["id"]
