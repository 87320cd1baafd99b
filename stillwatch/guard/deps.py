"""The gateway's parts in one object, and the dependency every /v1 route runs first: key, block, quota."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from stillwatch.guard.accounts import AccountStore, InvalidKey, Principal
from stillwatch.guard.audit import AuditEntry, AuditLog
from stillwatch.guard.clients import client_address, user_agent
from stillwatch.guard.errors import APIError, account_blocked, invalid_key, is_database_outage, over_quota, unavailable
from stillwatch.guard.metrics import Metrics
from stillwatch.guard.quotas import QuotaExceeded, Quotas
from stillwatch.guard.settings import GuardSettings

T = TypeVar("T")
log = logging.getLogger("stillwatch.guard")

bearer = HTTPBearer(auto_error=False, description="An API key made with `stillwatch keys create`.")


class RefusalBudget:
    """How many refusals per key per minute this replica audits; the count resets each minute, so memory is
    bounded by the keys refused in one minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._minute = -1
        self._counts: dict[str, int] = {}

    def admit(self, key_id: str) -> bool:
        """Whether this refusal of `key_id` is audited (False once the key spent its minute's budget)."""
        minute = int(time.monotonic() // 60)
        if minute != self._minute:
            self._minute, self._counts = minute, {}
        used = self._counts.get(key_id, 0)
        if used >= self.per_minute:
            return False
        self._counts[key_id] = used + 1
        return True


@dataclass
class Gateway:
    """Everything a request needs; built by `create_app`, kept on `app.state.gateway`."""

    settings: GuardSettings
    store: AccountStore
    audit: AuditLog
    quotas: Quotas
    metrics: Metrics
    backend: Any = None
    detection: Any = None  # the app's OnlineDetection, or None when detection is off
    inline_db: bool = True  # SQLite reads take microseconds: a thread hop would cost more than it saves
    inline_quotas: bool = True  # memory:// likewise; Redis and PostgreSQL go to a worker thread
    refusals: RefusalBudget | None = None  # refusals audited per key per minute (None: every one)
    _pending: set = field(default_factory=set)

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a short database call."""
        return fn(*args) if self.inline_db else await asyncio.to_thread(fn, *args)

    async def quota(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Run a quota call; when the quota store fails, 503 (fail closed) or None and no limit (fail open)."""
        try:
            return fn(*args) if self.inline_quotas else await asyncio.to_thread(fn, *args)
        except QuotaExceeded:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis down, timed out or refusing: the store is unavailable
            log.error("quota store unavailable: %s", type(exc).__name__)
            self.metrics.decisions.labels("quota_unavailable").inc()
            if self.settings.quota_failure == "open":
                return None
            raise unavailable("quota store", "quota_unavailable", self.settings.unavailable_retry_after_s) from None

    async def check_database(self) -> bool:
        """Whether the database answers a trivial query (for /health and /ready)."""
        def ping() -> None:
            with self.store.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

        try:
            await asyncio.wait_for(asyncio.to_thread(ping), timeout=2.0)
            return True
        except Exception:  # noqa: BLE001 - any failure means: not ready
            return False

    async def check_quotas(self) -> bool:
        """Whether the quota store answers (memory:// always does)."""
        if self.inline_quotas:
            return True
        try:
            return bool(await asyncio.wait_for(asyncio.to_thread(self.quotas.storage.check), timeout=2.0))
        except Exception:  # noqa: BLE001
            return False

    def detach(self, coro: Any) -> None:
        """Finish `coro` even though the request that started it was cancelled."""
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


@dataclass
class Call:
    """One request as the audit log sees it."""

    endpoint: str
    start: float
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    principal: Principal | None = None
    params: dict[str, Any] = field(default_factory=dict)
    prompt: Any = None
    rejected_prompt_chars: int = 2000
    client_addr: str | None = None
    user_agent: str | None = None
    limits: Any = None  # the quotas.Limits read for this request (one read serves every check of it)
    decision: str | None = None  # what the guard decided, once an audit entry says it (for the request log)
    rate_headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-* for the answer

    def entry(self, status: int, decision: str, error_code: str | None = None, completion: Any = None,
              prompt_tokens: int = 0, completion_tokens: int = 0) -> AuditEntry:
        """The audit entry for this call's outcome."""
        p = self.principal
        self.decision = decision
        return AuditEntry(account_id=p.account_id if p else None, key_id=p.key_id if p else None,
                          endpoint=self.endpoint, params=self.params, prompt=self.prompt, completion=completion,
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          latency_ms=(time.perf_counter() - self.start) * 1000.0, status=status, decision=decision,
                          error_code=error_code, request_id=self.request_id, client_addr=self.client_addr,
                          user_agent=self.user_agent,
                          prompt_limit=self.rejected_prompt_chars if status >= 400 else None)


def gateway(request: Request) -> Gateway:
    """The app's Gateway."""
    return request.app.state.gateway


async def authorize(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
    """401 for a bad key, 429 over quota, 403 for a blocked account, 503 if a store is down; else the Principal."""
    gw = gateway(request)
    call = Call(endpoint=request.url.path, start=getattr(request.state, "t0", time.perf_counter()),
                rejected_prompt_chars=gw.settings.rejected_prompt_chars,
                client_addr=client_address(request.client.host if request.client else None,
                                           request.headers.get("x-forwarded-for"),
                                           tuple(gw.settings.trusted_proxies)),
                user_agent=user_agent(request.headers.get("user-agent")))
    request.state.call = call
    if creds is None:
        gw.metrics.decisions.labels("deny").inc()
        raise invalid_key("You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.")
    try:
        principal = await gw.db(gw.store.authenticate, creds.credentials)
    except InvalidKey:
        gw.metrics.decisions.labels("deny").inc()
        raise invalid_key() from None
    except Exception as exc:
        if not is_database_outage(exc):
            raise
        log.error("database unavailable: %s", type(exc).__name__)
        raise unavailable("database", "database_unavailable", gw.settings.unavailable_retry_after_s) from None
    call.principal = principal
    if gw.quotas.store is not None:
        try:
            call.limits = await gw.db(gw.quotas.limits_for, principal)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            log.error("database unavailable: %s", type(exc).__name__)
            raise unavailable("database", "database_unavailable", gw.settings.unavailable_retry_after_s) from None
    # Quotas first: a blocked account that keeps sending is throttled like any other, not given a free
    # (and audited) 403 per request.
    try:
        call.rate_headers = await gw.quota(gw.quotas.check_request, principal, call.limits) or {}
    except QuotaExceeded as exc:
        raise over_quota(exc.retry_after, exc.should_retry, str(exc)) from None
    if principal.blocked:
        raise account_blocked(principal.block_reason if gw.settings.show_block_reason else None)
    return principal


async def audit_error(request: Request, err: APIError) -> None:
    """Exception-handler hook: an authenticated request that ends in an error is audited too."""
    call: Call | None = getattr(request.state, "call", None)
    gw: Gateway | None = getattr(request.app.state, "gateway", None)
    if gw is None or call is None or call.principal is None:
        return
    gw.metrics.decisions.labels(err.decision).inc()
    if err.status in (403, 429) and gw.refusals is not None and not gw.refusals.admit(call.principal.key_id):
        gw.metrics.refusals_unaudited.inc()
        return
    try:
        await gw.audit.record(call.entry(err.status, err.decision, error_code=err.code))
    except Exception:  # noqa: BLE001 - the error response goes out regardless
        pass
