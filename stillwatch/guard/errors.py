"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, and the handlers that emit them.

The official client maps the status to its exception class (401 AuthenticationError, 403 PermissionDeniedError,
429 RateLimitError, 400 BadRequestError) and honours `Retry-After`, `retry-after-ms` and `x-should-retry`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("stillwatch.guard")


class APIError(Exception):
    """An error response: status, OpenAI error body and extra headers."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None, decision: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}
        # What the guard decided, for the audit log: bad input is rejected, a bug or outage is an error.
        self.decision = decision or ("reject" if status < 500 else "error")

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The JSON response for this error."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """400 naming the offending parameter."""
    return APIError(400, message, param=param, code=code or ("invalid_value" if param else None))


def invalid_key(message: str = "Incorrect API key provided.") -> APIError:
    """401: a missing, unknown or revoked key. Never echo the key itself."""
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}, decision="deny")


def account_blocked(reason: str | None) -> APIError:
    """403 `account_blocked`: the client does not retry it."""
    message = "This account has been blocked" + (f": {reason}" if reason else ".")
    return APIError(403, message, type="permission_error", code="account_blocked", decision="block")


def degrade_unavailable() -> APIError:
    """403 for a degraded account on a gateway that cannot degrade: refused as if blocked, never served clean
    traces (that would defeat the point) and never a 503 that says the service is down."""
    return APIError(403, "This account's access is restricted.", type="permission_error",
                    code="account_restricted", decision="block")


def over_quota(retry_after: float, should_retry: bool, message: str | None = None) -> APIError:
    """429 with `Retry-After`; `x-should-retry: false` where waiting will not help."""
    wait = max(0.0, float(retry_after)) if math.isfinite(retry_after) else 0.0
    headers = {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
    if not should_retry:
        headers["x-should-retry"] = "false"
    text = message or (f"Rate limit reached for this account; retry in {wait:.1f} s." if should_retry
                       else "This request exceeds the account's quota; waiting will not help.")
    return APIError(429, text, type="rate_limit_error" if should_retry else "insufficient_quota",
                    code="rate_limit_exceeded" if should_retry else "insufficient_quota", headers=headers,
                    decision="throttle")


def unavailable(what: str, code: str, retry_after_s: int) -> APIError:
    """503 with `Retry-After`: a store the gateway needs is down; the client retries after a moment."""
    return APIError(503, f"The {what} is unavailable right now; retry in a moment.", type="server_error",
                    code=code, headers={"Retry-After": str(retry_after_s)})


def is_database_outage(exc: BaseException) -> bool:
    """A database that cannot be reached or used right now (not a bug in a query)."""
    from sqlalchemy import exc as sa

    return isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError, sa.DisconnectionError))


def too_large(limit: int) -> APIError:
    """413: the body is over the configured cap."""
    return APIError(413, f"Request body exceeds the limit of {limit} bytes.", code="request_too_large")


def too_slow(seconds: float) -> APIError:
    """408: the body did not arrive in time."""
    return APIError(408, f"The request body did not arrive within {seconds:g} s.", code="request_timeout")


def invalid_url(method: str, path: str, status: int = 404, headers: dict[str, str] | None = None) -> APIError:
    """OpenAI's answer to a route it does not have: "Invalid URL (POST /v1/nothing)"."""
    shown = path if len(path) <= 200 else path[:200] + "…"  # a fuzzed path is echoed, never without limit
    return APIError(status, f"Invalid URL ({method[:16]} {shown})", headers=headers)


def _param(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    # pydantic names union branches ("str", "list[...]", "function-after[...]"); drop them from the path.
    parts = [p for p in parts if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool")))]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def validation_error(exc: RequestValidationError) -> APIError:
    """Map FastAPI's 422 onto OpenAI's 400, naming the first offending parameter."""
    errors = exc.errors()
    first = errors[0] if errors else {"type": "value_error", "loc": (), "msg": "invalid request"}
    kind, param = first.get("type", ""), _param(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return bad_request("We could not parse the JSON body of your request. (HINT: it must be valid UTF-8 "
                           "JSON.)", code="invalid_json")
    if kind == "extra_forbidden":
        name = param.rsplit(".", 1)[-1] if param else None
        from stillwatch.guard.schemas import UPSTREAM_ONLY_PARAMS

        if name in UPSTREAM_ONLY_PARAMS and param == name:
            return APIError(400, f"This backend (a model served in process) cannot honour '{name}'; serve it "
                                 "with --upstream to pass it to a server that does.", param=param,
                            code="unsupported_parameter")
        return bad_request(f"Unrecognized request argument supplied: {name}", param=param,
                           code="unknown_parameter")
    if kind in ("dict_type", "model_type", "model_attributes_type") and param is None:
        return bad_request("The request body must be a JSON object (send Content-Type: application/json).",
                           code="invalid_body")
    if kind == "missing":
        if param is None:
            return bad_request("The request needs a JSON body.", code="missing_body")
        return bad_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    if kind == "literal_error" and param and param.endswith(".role") and first.get("input") in ("tool", "function"):
        return APIError(400, f"This backend (a model served in process) cannot honour {first['input']} messages; "
                             "serve it with --upstream to pass them to a server that does.", param=param,
                        code="unsupported_parameter")
    msg = str(first.get("msg", "invalid value"))
    return bad_request(f"Invalid value for '{param}': {msg}." if param else msg, param=param)


Recorder = Callable[[Request, APIError], Awaitable[None]]


def install_handlers(app: FastAPI, on_error: Recorder | None = None) -> None:
    """Every error leaves in OpenAI's shape; `on_error` audits it when the request was authenticated."""

    async def respond(request: Request, err: APIError) -> JSONResponse:
        if on_error is not None:
            await on_error(request, err)
        return err.response()

    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return await respond(request, exc)

    async def request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await respond(request, validation_error(exc))

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # Starlette could not read the body (invalid UTF-8, bad encoding)
            err = bad_request("We could not parse the JSON body of your request. (HINT: it must be valid UTF-8 "
                              "JSON.)", code="invalid_json")
        elif exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
            err = invalid_url(request.method, request.url.path, exc.status_code, dict(exc.headers or {}))
        else:
            kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
            err = APIError(exc.status_code, str(exc.detail), type=kind, headers=dict(exc.headers or {}))
        return await respond(request, err)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_database_outage(exc):  # any route (admin included) whose database went away
            log.error("database unavailable on %s: %s", request.url.path, type(exc).__name__)
            gw = getattr(request.app.state, "gateway", None)
            wait = gw.settings.unavailable_retry_after_s if gw is not None else 2
            return await respond(request, unavailable("database", "database_unavailable", wait))
        # A bug: log it (the traceback has no key in it) and answer in OpenAI's shape.
        log.exception("unhandled error on %s", request.url.path)
        return await respond(request, APIError(500, "The server had an error while processing your request.",
                                               type="server_error"))

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(RequestValidationError, request_validation)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def error_bytes(err: APIError) -> bytes:
    """The error body as JSON bytes (for raw ASGI responses)."""
    return json.dumps(err.body()).encode()
