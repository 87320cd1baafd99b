"""The admin API (mounted at /admin): accounts, keys, manual actions (block, degrade, hide reasoning, throttle,
clear, confirm), the review queue, evidence bundles, usage and the audit trail.

It takes its own key (`Authorization: Bearer <admin key>`, from `STILLWATCH_ADMIN_KEY`), compared in constant
time. With no admin key configured the whole admin API answers 403: it is off, not open. Every error leaves
in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, whatever handlers the app installs.
Every change made through it (and every refused attempt at one) is a record in the audit log, and failed
admin-key attempts are logged and limited per client address.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime, timezone
from typing import Any, Callable, Coroutine

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from stillwatch.errors import StillwatchError
from stillwatch.guard.accounts import AccountExists, AccountStore, BadAccountName, UnknownAccount, UnknownKey
from stillwatch.guard.admin_quotas import add_quota_routes
from stillwatch.guard.actions import ActionLog, account_with_history, operator_action
from stillwatch.guard.audit import AuditEntry, AuditLog
from stillwatch.guard.evidence import evidence_bundle

log = logging.getLogger("stillwatch.guard")
# Wrong admin keys allowed per client address before 429: enough for a typo, too few to guess.
ADMIN_FAILURES = "10/minute"


class AdminError(Exception):
    """An admin API error with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The OpenAI-shaped JSON response."""
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _from_exception(exc: Exception) -> AdminError:
    if isinstance(exc, AdminError):
        return exc
    if isinstance(exc, RequestValidationError):
        first = (exc.errors() or [{}])[0]
        if first.get("type") == "json_invalid":
            return AdminError(400, "We could not parse the JSON body of your request.", code="invalid_json")
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        return AdminError(400, f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param
                          else str(first.get("msg", "invalid request")), code="invalid_value", param=param)
    if isinstance(exc, (UnknownAccount, UnknownKey)):
        return AdminError(404, str(exc), type="not_found_error", code="not_found")
    if isinstance(exc, AccountExists):
        return AdminError(409, str(exc), code="conflict")
    if isinstance(exc, BadAccountName):
        return AdminError(400, str(exc), code="invalid_value", param="name")
    if isinstance(exc, StillwatchError):
        return AdminError(400, str(exc), code="invalid_request")
    raise exc


class _AdminRoute(APIRoute):
    """Turns every expected exception, validation included, into an OpenAI-shaped error response."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (AdminError, RequestValidationError, StillwatchError) as exc:
                return _from_exception(exc).response()

        return guarded


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewAccount(_Body):
    name: str = Field(min_length=1, max_length=200)


class NewKey(_Body):
    account: str = Field(min_length=1, max_length=200)


class NoteRequest(_Body):
    note: str = Field("", max_length=2000)


class BlockRequest(NoteRequest):
    reason: str = Field("", max_length=2000)


class ThrottleRequest(NoteRequest):
    rpm: int = Field(ge=1, le=1_000_000)


def _listing(data: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": data}


def _audited(audit: AuditLog) -> type[APIRoute]:
    """A route class that records every admin change (POST, DELETE), refused or not, in the audit log."""

    class AuditedRoute(_AdminRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def audited(request: Request) -> Response:
                response = await handler(request)
                # The app's lifespan starts the audit writer; a router mounted without one (tests) has none.
                if request.method not in ("GET", "HEAD", "OPTIONS") and audit.running:
                    entry = AuditEntry(endpoint=request.url.path[:100], params={"method": request.method},
                                       status=response.status_code, decision="admin",
                                       error_code="admin" if response.status_code < 400 else "admin_refused")
                    try:
                        await audit.record(entry)
                    except Exception as exc:  # noqa: BLE001 - the change is made; say the trail missed it
                        log.error("audit write of an admin action failed: %s", type(exc).__name__)
                return response

            return audited

    return AuditedRoute


def admin_router(store: AccountStore, audit: AuditLog, settings: Any) -> APIRouter:
    """The /admin router over `store` and `audit`; disabled (403) unless `settings.admin_key` is set."""
    from limits import parse
    from limits.storage import MemoryStorage
    from limits.strategies import MovingWindowRateLimiter

    secret = getattr(settings, "admin_key", None)
    admin_key = (secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret) or None
    failures, failure_limit = MovingWindowRateLimiter(MemoryStorage()), parse(ADMIN_FAILURES)

    def require_admin(request: Request) -> None:
        if admin_key is None:
            raise AdminError(403, "The admin API is disabled: set STILLWATCH_ADMIN_KEY to enable it.",
                             type="permission_error", code="admin_disabled")
        client = request.client.host if request.client else "unknown"
        if not failures.test(failure_limit, "admin", client):
            raise AdminError(429, "Too many wrong admin keys from this address; retry in a minute.",
                             type="rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "60"})
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"),
                                                                  admin_key.encode("utf-8")):
            failures.hit(failure_limit, "admin", client)
            log.warning("wrong admin key from %s on %s %s", client, request.method, request.url.path[:100])
            raise AdminError(401, "Incorrect or missing admin key.", type="invalid_request_error",
                             code="invalid_admin_key", headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter(route_class=_audited(audit), dependencies=[Depends(require_admin)], tags=["admin"])

    @router.get("/accounts")
    def list_accounts() -> dict[str, Any]:
        """Every account with its state and number of active keys."""
        return _listing(store.list_accounts())

    @router.post("/accounts", status_code=201)
    def create_account(body: NewAccount) -> dict[str, Any]:
        """Create an account (409 if the name is taken)."""
        return store.create_account(body.name)

    @router.get("/accounts/{name}")
    def get_account(name: str) -> dict[str, Any]:
        """One account, with its action history and the evidence of each action."""
        return account_with_history(store, name)

    @router.post("/accounts/{name}/keys", status_code=201)
    def create_account_key(name: str) -> dict[str, Any]:
        """A new key for the account (created if missing). The key is in this response and nowhere else."""
        key_id, raw = store.create_key(name)
        return {"key_id": key_id, "account": name, "key": raw}

    @router.get("/accounts/{name}/keys")
    def list_account_keys(name: str) -> dict[str, Any]:
        """The account's keys (ids and dates only)."""
        return _listing(store.list_keys(name))

    @router.post("/keys", status_code=201)
    def create_key(body: NewKey) -> dict[str, Any]:
        """A new key for `account` (created if missing)."""
        return create_account_key(body.account)

    @router.get("/keys")
    def list_keys(account: str | None = Query(None, max_length=200)) -> dict[str, Any]:
        """Every key, or one account's."""
        return _listing(store.list_keys(account))

    @router.delete("/keys/{key_id}")
    def revoke_key(key_id: str) -> dict[str, Any]:
        """Revoke a key (404 if unknown; revoking twice is fine)."""
        store.revoke_key(key_id)
        return {"key_id": key_id, "revoked": True}

    @router.post("/keys/{key_id}/revoke")
    def revoke_key_post(key_id: str) -> dict[str, Any]:
        """Revoke a key (the same as DELETE /keys/{key_id})."""
        return revoke_key(key_id)

    @router.post("/accounts/{name}/block")
    def block(name: str, body: BlockRequest) -> dict[str, Any]:
        """Block the account: every key gets 403 `account_blocked` from the next request on."""
        return operator_action(store, name, "block", body.note or None, reason=body.reason)

    @router.post("/accounts/{name}/throttle")
    def throttle(name: str, body: ThrottleRequest) -> dict[str, Any]:
        """Cap the account at `rpm` requests per minute, below its quota."""
        return operator_action(store, name, "throttle", body.note or None, rpm=body.rpm)

    def manual(action: str, summary: str) -> None:
        def apply(name: str, body: NoteRequest | None = None) -> dict[str, Any]:
            return operator_action(store, name, action, (body.note or None) if body else None)

        apply.__doc__ = summary
        router.add_api_route(f"/accounts/{{name}}/{action.replace('_', '-')}", apply, methods=["POST"],
                             name=action, summary=summary)

    for action, summary in (("unblock", "Lift a block."),
                            ("degrade", "Serve this account with antidistillation sampling."),
                            ("undegrade", "Back to normal sampling."),
                            ("hide_reasoning", "Serve this account final answers without reasoning traces."),
                            ("show_reasoning", "Serve this account reasoning traces again."),
                            ("unthrottle", "Lift a throttle."),
                            ("clear", "Lift every restriction; the detector forgets the evidence before now."),
                            ("confirm", "Uphold the detector's action; the account leaves the review queue.")):
        manual(action, summary)

    @router.get("/review")
    def review() -> dict[str, Any]:
        """Accounts whose newest action is the detector's, awaiting a person: riskiest first."""
        names = {a["id"]: a["name"] for a in store.list_accounts()}
        return _listing([{**a, "account": names.get(a["account_id"])}
                         for a in ActionLog(store.engine).review_queue()])

    @router.get("/accounts/{name}/evidence")
    def evidence(name: str) -> dict[str, Any]:
        """A self-contained evidence bundle: the account, its actions, and the audit records they cite."""
        return evidence_bundle(store, name)

    @router.get("/accounts/{name}/usage")
    def usage(name: str, since: datetime | None = None) -> dict[str, Any]:
        """Requests and tokens of the account, all time or since a time."""
        return store.usage(name, since=_aware(since))

    @router.get("/audit")
    def audit_query(account: str | None = Query(None, max_length=200), since: datetime | None = None,
                    key_id: str | None = Query(None, max_length=32),
                    limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """The newest audit records, newest first."""
        return _listing(audit.query(account=account, since=_aware(since), limit=limit, key_id=key_id))

    add_quota_routes(router, store)
    return router


def _aware(value: datetime | None) -> datetime | None:
    # A time without a zone is taken as UTC, the zone of every stored time.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
