"""The OpenAI surface (/v1) and the operations endpoints (/health, /ready, /metrics).

Each /v1 request runs: auth (401) → quota (429) → blocked? (403) → parameter limits (400) → backend → token
charge → audit record committed → last byte. For a stream, the record commits before `data: [DONE]`. A
database or quota store that is down gives 503 with Retry-After, never 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from stillwatch.guard.accounts import Principal
from stillwatch.guard.backends import Result, stream_pieces
from stillwatch.guard.deps import Call, Gateway, authorize, gateway
from stillwatch.guard.errors import APIError, bad_request, over_quota
from stillwatch.guard.quotas import QuotaExceeded
from stillwatch.guard.schemas import (ERROR_RESPONSES, ChatCompletion, ChatCompletionRequest, CompletionRequest,
                                      ModelList, TextCompletion)

log = logging.getLogger("stillwatch.guard")

v1 = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)
ops = APIRouter(tags=["operations"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _check_common(body: ChatCompletionRequest | CompletionRequest, settings: Any, max_tokens: int | None,
                  max_tokens_param: str) -> None:
    n = body.n or 1
    if n > settings.max_n:
        raise bad_request(f"n must be at most {settings.max_n}.", param="n")
    if max_tokens is not None and max_tokens > settings.max_tokens_limit:
        raise bad_request(f"{max_tokens_param} must be at most {settings.max_tokens_limit}.", param=max_tokens_param)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true.", param="stream_options")


async def _check_tokens(gw: Gateway, principal: Principal, wanted: int) -> None:
    """A request whose max_tokens can never fit the token quota is refused up front (429, no retry)."""
    try:
        await gw.quota(gw.quotas.check_tokens, principal, wanted)
    except QuotaExceeded as exc:
        raise over_quota(exc.retry_after, exc.should_retry, str(exc)) from None


async def _finish(gw: Gateway, call: Call, result: Result, status: int, decision: str,
                  error_code: str | None = None) -> None:
    """Charge tokens and commit the audit record (raises if the record could not be written)."""
    principal = call.principal
    assert principal is not None
    tokens = result.prompt_tokens + result.completion_tokens
    gw.metrics.tokens.labels("prompt").inc(result.prompt_tokens)
    gw.metrics.tokens.labels("completion").inc(result.completion_tokens)
    gw.metrics.decisions.labels(decision).inc()
    try:
        await gw.quota(gw.quotas.charge_tokens, principal, tokens)
    except Exception:  # noqa: BLE001 - a quota store hiccup must not lose the audit record
        log.exception("charging tokens failed")
    completion = (result.texts[0] if len(result.texts) == 1 else result.texts) if result.texts else None
    await gw.audit.record(call.entry(status, decision, completion=completion, prompt_tokens=result.prompt_tokens,
                                     completion_tokens=result.completion_tokens, error_code=error_code))


def _unaudited(retry_after_s: int = 2) -> APIError:
    return APIError(503, "The audit log is unavailable; the response was withheld.", type="server_error",
                    code="audit_unavailable", headers={"Retry-After": str(retry_after_s)})


async def _respond(gw: Gateway, call: Call, result: Result, include_usage: bool) -> Response:
    decision = "degrade" if call.principal is not None and call.principal.degraded else "allow"
    if result.chunks is None:
        try:
            await _finish(gw, call, result, 200, decision)
        except Exception:  # noqa: BLE001
            log.exception("audit write failed")
            raise _unaudited(gw.settings.unavailable_retry_after_s) from None
        raw = result.raw if result.raw is not None else _json(result.body)
        return Response(raw, media_type="application/json",
                        headers={"x-request-id": call.request_id})
    return StreamingResponse(_sse(gw, call, result, include_usage, decision), media_type="text/event-stream",
                             headers={**SSE_HEADERS, "x-request-id": call.request_id})


class Delivered:
    """What a stream has handed to the client so far: the audit and the token charge of a stream that ends
    early (a hang-up, a broken or malformed upstream) are what was delivered, not what was generated."""

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.pieces = 0

    def note(self, chunk: dict) -> None:
        """Count one chunk that was sent."""
        for index, piece in stream_pieces(chunk):
            if piece:
                self.texts.setdefault(index, []).append(piece)
                self.pieces += 1

    def settle(self, result: Result, complete: bool) -> None:
        """Make `result` say what was delivered (a complete stream keeps the texts its backend knew)."""
        if not complete or not result.texts:
            result.texts = ["".join(v) for _, v in sorted(self.texts.items())]
        if not complete:
            # One piece per token is how OpenAI-compatible servers stream; a backend that knows its count
            # (the local one) is never charged more than it generated.
            known = result.completion_tokens
            result.completion_tokens = min(self.pieces, known) if known else self.pieces


async def _sse(gw: Gateway, call: Call, result: Result, include_usage: bool, decision: str) -> AsyncIterator[bytes]:
    assert result.chunks is not None
    delivered = Delivered()
    try:
        async for chunk in result.chunks:
            if not chunk.get("choices") and chunk.get("usage") is not None:
                if not include_usage:
                    continue
            elif not include_usage:
                chunk.pop("usage", None)
            yield b"data: " + _json(chunk) + b"\n\n"
            delivered.note(chunk)
    except asyncio.CancelledError:  # the client hung up: still audit what it was sent
        delivered.settle(result, complete=False)
        gw.detach(_finish(gw, call, result, 499, decision, "client_closed_request"))
        raise
    delivered.settle(result, complete=result.finished)
    status = 200 if result.finished else 502
    try:
        await _finish(gw, call, result, status, decision,
                      None if result.finished else (result.error.code if result.error else "bad_gateway"))
    except Exception:  # noqa: BLE001
        log.exception("audit write failed")
        yield b"data: " + _json(_unaudited().body()) + b"\n\n"
        return
    if not result.finished:
        err = result.error or APIError(502, "The upstream stream broke off.", type="upstream_error",
                                       code="bad_gateway")
        yield b"data: " + _json(err.body()) + b"\n\n"
        return
    yield b"data: [DONE]\n\n"


@v1.get("/models", response_model=ModelList)
async def list_models(request: Request, principal: Principal = Depends(authorize)) -> Response:
    """The models this gateway serves."""
    gw = gateway(request)
    body = await gw.backend.models()
    call: Call = request.state.call
    await gw.audit.record(call.entry(200, "allow"))
    return Response(_json(body), media_type="application/json")


@v1.post("/chat/completions", response_model=ChatCompletion,
         responses={200: {"content": {"text/event-stream": {}}}})
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           principal: Principal = Depends(authorize)) -> Response:
    """OpenAI chat completions, stream or not; prompts go through the model's chat template."""
    gw = gateway(request)
    call: Call = request.state.call
    call.params = body.model_dump(exclude_none=True, exclude={"messages"})
    call.prompt = [m.model_dump(exclude_none=True) for m in body.messages]
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise bad_request("Give max_tokens or max_completion_tokens, not both.", param="max_completion_tokens")
    max_tokens = body.max_completion_tokens or body.max_tokens
    _check_common(body, gw.settings, max_tokens, "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
    if body.top_logprobs and not body.logprobs:
        raise bad_request("logprobs must be true when top_logprobs is set.", param="top_logprobs")
    if max_tokens is not None:
        await _check_tokens(gw, principal, max_tokens * (body.n or 1))
    result = await gw.backend.chat(body, principal.degraded)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(gw, call, result, include_usage)


@v1.post("/completions", response_model=TextCompletion, responses={200: {"content": {"text/event-stream": {}}}})
async def completions(body: CompletionRequest, request: Request, principal: Principal = Depends(authorize)) -> Response:
    """OpenAI (legacy) completions. `echo=true, max_tokens=0, logprobs=k` scores the prompt itself: its
    token logprobs (the first is null) and top-k alternatives, as distillation needs."""
    gw = gateway(request)
    call: Call = request.state.call
    call.params = body.model_dump(exclude_none=True, exclude={"prompt"})
    call.prompt = body.prompt
    _check_common(body, gw.settings, body.max_tokens, "max_tokens")
    n = body.n or 1
    if body.best_of is not None and body.best_of != n:
        raise bad_request("best_of is only supported equal to n.", param="best_of")
    prompts = 1 if isinstance(body.prompt, str) or isinstance(body.prompt[0], int) else len(body.prompt)
    if prompts * n > gw.settings.max_batch:
        raise bad_request(f"At most {gw.settings.max_batch} prompts × n per request.", param="prompt")
    if body.max_tokens:
        await _check_tokens(gw, principal, body.max_tokens * n * prompts)
    result = await gw.backend.completions(body, principal.degraded)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _respond(gw, call, result, include_usage)


@ops.get("/health")
async def health(request: Request) -> JSONResponse:
    """Liveness (always 200 while the process answers): "ok", "starting", or "degraded" naming what is down."""
    gw = gateway(request)
    checks = await _checks(gw)
    status = "starting" if gw.backend is None else ("ok" if all(checks.values()) else "degraded")
    return JSONResponse({"status": status, "checks": {k: "ok" if v else "unavailable" for k, v in checks.items()}})


@ops.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Readiness for orchestrators: 200 when requests can be served, else 503 with Retry-After."""
    gw = gateway(request)
    checks = await _checks(gw)
    checks["backend"] = gw.backend is not None
    body = {"ready": all(checks.values()), "checks": {k: "ok" if v else "unavailable" for k, v in checks.items()}}
    if body["ready"]:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(gw.settings.unavailable_retry_after_s)})


async def _checks(gw: Gateway) -> dict[str, bool]:
    database, quotas = await asyncio.gather(gw.check_database(), gw.check_quotas())
    return {"database": database, "quota_store": quotas}


@ops.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of this app's registry."""
    gw = gateway(request)
    return Response(gw.metrics.render(), media_type=gw.metrics.content_type)
