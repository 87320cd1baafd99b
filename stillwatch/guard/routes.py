"""The OpenAI surface (/v1) and the operations endpoints (/health, /ready, /metrics).

Each /v1 request runs: auth (401) → quota (429) → blocked? (403) → parameter limits (400) → backend → token
charge → audit record committed → last byte. For a stream, the record commits before `data: [DONE]` (the
Responses API's last event, which has no [DONE]). A database or quota store that is down gives 503 with
Retry-After, never 500.

`openai_router(passthrough)` builds the /v1 routes for one app: with a pass-through backend (`--upstream`)
the request bodies keep every field as sent (schemas.Passthrough*), and /v1/responses and /v1/embeddings
are served; with a model in process the strict schemas apply.
"""

# No `from __future__ import annotations` here: the routes' body types are chosen when the router is built,
# and FastAPI must see them as real classes, not names to look up in this module.

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response, StreamingResponse

from stillwatch.guard.accounts import Principal
from stillwatch.guard.backends import Result, estimate_prompt_tokens
from stillwatch.guard.deps import Call, Gateway, authorize, gateway
from stillwatch.guard.errors import APIError, bad_request, degrade_unavailable, over_quota
from stillwatch.guard.middleware import route_label
from stillwatch.guard.quotas import QuotaExceeded
from stillwatch.guard.reasoning import hide_responses
from stillwatch.guard.replies import RESPONSES_TERMINAL, Delivered, Kind
from stillwatch.guard.schemas import (ERROR_RESPONSES, ChatCompletion, ChatCompletionRequest, CompletionRequest,
                                      EmbeddingsRequest, ModelCard, ModelList, PassthroughChatRequest,
                                      PassthroughCompletionRequest, ResponsesRequest, TextCompletion)

log = logging.getLogger("stillwatch.guard")

ops = APIRouter(tags=["operations"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _check_max_tokens(settings: Any, max_tokens: int | None, param: str) -> None:
    if max_tokens is not None and max_tokens > settings.max_tokens_limit:
        raise bad_request(f"{param} must be at most {settings.max_tokens_limit} on this gateway "
                          "(STILLWATCH_MAX_TOKENS_LIMIT).", param=param)


def _check_common(body: Any, settings: Any, max_tokens: int | None, max_tokens_param: str) -> None:
    n = body.n or 1
    if n > settings.max_n:
        raise bad_request(f"n must be at most {settings.max_n}.", param="n")
    _check_max_tokens(settings, max_tokens, max_tokens_param)
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed when stream is true.", param="stream_options")


async def _check_tokens(gw: Gateway, principal: Principal, wanted: int, limits: Any = None) -> None:
    """A request whose max_tokens can never fit the token quota is refused up front (429, no retry)."""
    try:
        await gw.quota(gw.quotas.check_tokens, principal, wanted, limits)
    except QuotaExceeded as exc:
        raise over_quota(exc.retry_after, exc.should_retry, str(exc)) from None


async def _finish(gw: Gateway, call: Call, result: Result, status: int, decision: str,
                  error_code: str | None = None) -> None:
    """Charge tokens and commit the audit record (raises if the record could not be written)."""
    principal = call.principal
    assert principal is not None
    if not result.prompt_tokens and result.request is not None and status < 500:
        # The upstream said nothing about the prompt: charge an estimate (serialising a big prompt is a
        # worker's job).
        result.prompt_tokens = await asyncio.to_thread(estimate_prompt_tokens, result.request)
    tokens = result.prompt_tokens + result.completion_tokens
    gw.metrics.tokens.labels("prompt").inc(result.prompt_tokens)
    gw.metrics.tokens.labels("completion").inc(result.completion_tokens)
    gw.metrics.decisions.labels(decision).inc()
    try:
        await gw.quota(gw.quotas.charge_tokens, principal, tokens, call.limits)
    except Exception:  # noqa: BLE001 - a quota store hiccup must not lose the audit record
        log.exception("charging tokens failed")
    completion = (result.texts[0] if len(result.texts) == 1 else result.texts) if result.texts else None
    await gw.audit.record(call.entry(status, decision, completion=completion, prompt_tokens=result.prompt_tokens,
                                     completion_tokens=result.completion_tokens, error_code=error_code))


def _unaudited(retry_after_s: int = 2) -> APIError:
    return APIError(503, "The audit log is unavailable; the response was withheld.", type="server_error",
                    code="audit_unavailable", headers={"Retry-After": str(retry_after_s)})


def _unsupported_endpoint(request: Request) -> APIError:
    return APIError(404, f"{request.url.path} is not served by this gateway's backend (a model in process); "
                         "serve with --upstream to pass it to a server that has it.", type="invalid_request_error",
                    code="unsupported_endpoint")


def hides_reasoning(principal: Principal | None, settings: Any) -> bool:
    """Whether this request is served without reasoning: for the whole gateway, or for this account."""
    return bool(settings.hide_reasoning or (principal is not None and principal.hide_reasoning))


def _check_degradable(gw: Gateway, principal: Principal) -> None:
    """A degraded account on a gateway that cannot degrade is refused (403), never served clean traces."""
    if principal.degraded and not getattr(gw.backend, "can_degrade", True):
        raise degrade_unavailable()


def serving_decision(principal: Principal | None, settings: Any) -> str:
    """The audit's decision for a served request: how it was served."""
    if principal is not None and principal.degraded:
        return "degrade"
    return "hide_reasoning" if hides_reasoning(principal, settings) else "allow"


async def _respond(gw: Gateway, call: Call, result: Result, include_usage: bool, kind: Kind = "chat") -> Response:
    decision = serving_decision(call.principal, gw.settings)
    if result.chunks is None:
        _first_token(gw, call)  # a whole answer: its first token arrives with its last
        try:
            await _finish(gw, call, result, 200, decision)
        except Exception:  # noqa: BLE001
            log.exception("audit write failed")
            raise _unaudited(gw.settings.unavailable_retry_after_s) from None
        raw = result.raw if result.raw is not None else _json(result.body)
        return Response(raw, media_type="application/json",
                        headers={"x-request-id": call.request_id, **call.rate_headers})
    events = _sse_events(gw, call, result, decision) if kind == "responses" else \
        _sse(gw, call, result, include_usage, decision, kind)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={**SSE_HEADERS, "x-request-id": call.request_id, **call.rate_headers})


def _first_token(gw: Gateway, call: Call) -> None:
    gw.metrics.first_token.labels(route_label(call.endpoint)).observe(time.perf_counter() - call.start)


def _settle(delivered: Delivered, result: Result, complete: bool) -> None:
    """Make `result` say what was delivered (a complete stream keeps the answers its backend knew)."""
    if not complete or not result.texts:
        result.texts = delivered.outputs()
    if not complete or not result.completion_tokens:
        # One piece per token is how OpenAI-compatible servers stream; a backend that knows its count
        # (the local one) is never charged more than it generated, and a stream without usage is not free.
        known = result.completion_tokens
        result.completion_tokens = min(delivered.pieces, known) if known else delivered.pieces


async def _sse_events(gw: Gateway, call: Call, result: Result, decision: str) -> AsyncIterator[bytes]:
    """The Responses API's stream: named events, the last of which (response.completed) waits for the audit."""
    assert result.chunks is not None
    delivered = Delivered("responses")
    last: dict | None = None
    try:
        async for event in result.chunks:
            if event.get("type") in RESPONSES_TERMINAL:
                last = event
                delivered.note(event)
                break
            yield b"event: " + event["type"].encode() + b"\ndata: " + _json(event) + b"\n\n"
            before = delivered.pieces
            delivered.note(event)
            if delivered.pieces and not before:
                _first_token(gw, call)
    except asyncio.CancelledError:
        _settle(delivered, result, complete=False)
        gw.detach(_finish(gw, call, result, 499, decision, "client_closed_request"))
        raise
    finished = last is not None
    _settle(delivered, result, complete=finished)
    try:
        await _finish(gw, call, result, 200 if finished else 502, decision,
                      None if finished else (result.error.code if result.error else "bad_gateway"))
    except Exception:  # noqa: BLE001
        log.exception("audit write failed")
        yield b"event: error\ndata: " + _json(_unaudited().body()) + b"\n\n"
        return
    if last is None:
        err = result.error or APIError(502, "The upstream stream broke off.", type="upstream_error",
                                       code="bad_gateway")
        yield b"event: error\ndata: " + _json({"type": "error", **err.body()}) + b"\n\n"
        return
    yield b"event: " + last["type"].encode() + b"\ndata: " + _json(last) + b"\n\n"


async def _sse(gw: Gateway, call: Call, result: Result, include_usage: bool, decision: str,
               kind: Kind = "chat") -> AsyncIterator[bytes]:
    assert result.chunks is not None
    delivered = Delivered(kind)
    try:
        async for chunk in result.chunks:
            if not chunk.get("choices") and chunk.get("usage") is not None:
                if not include_usage:
                    continue
            elif not include_usage:
                chunk.pop("usage", None)
            yield b"data: " + _json(chunk) + b"\n\n"
            before = delivered.pieces
            delivered.note(chunk)
            if delivered.pieces and not before:
                _first_token(gw, call)
    except asyncio.CancelledError:  # the client hung up: still audit what it was sent
        _settle(delivered, result, complete=False)
        gw.detach(_finish(gw, call, result, 499, decision, "client_closed_request"))
        raise
    _settle(delivered, result, complete=result.finished)
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


LARGE_BODY = 256_000  # bytes of JSON past which a request body is parsed in a worker thread


class OffloadedJSON(APIRoute):
    """Parses a large JSON body in a worker thread before FastAPI reads it (Starlette keeps the result on the
    request), so that one key's megabyte bodies never hold the event loop that /health and everyone else
    need. Invalid JSON is left for FastAPI, which answers it as usual."""

    def get_route_handler(self):  # type: ignore[no-untyped-def]
        handler = super().get_route_handler()

        async def parse_first(request: Request) -> Response:
            body = await request.body()
            if len(body) > LARGE_BODY:
                try:
                    request._json = await asyncio.to_thread(json.loads, body)  # what request.json() returns
                except ValueError:
                    pass
            return await handler(request)

        return parse_first


def _include_usage(body: Any) -> bool:
    options = body.stream_options
    return bool(options is not None and options.include_usage)


def openai_router(passthrough: bool) -> APIRouter:
    """The /v1 routes of one app; `passthrough` picks the request schemas (see the module docstring)."""
    chat_schema = PassthroughChatRequest if passthrough else ChatCompletionRequest
    completion_schema = PassthroughCompletionRequest if passthrough else CompletionRequest
    v1 = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES, route_class=OffloadedJSON)

    @v1.get("/models", response_model=ModelList)
    async def list_models(request: Request, principal: Principal = Depends(authorize)) -> Response:
        """The models this gateway serves."""
        gw = gateway(request)
        body = await gw.backend.models()
        call: Call = request.state.call
        await gw.audit.record(call.entry(200, "allow"))
        return Response(_json(body), media_type="application/json")

    @v1.get("/models/{model_id:path}", response_model=ModelCard)
    async def get_model(model_id: str, request: Request, principal: Principal = Depends(authorize)) -> Response:
        """One model by id (404 model_not_found for one this gateway does not serve)."""
        gw = gateway(request)
        call: Call = request.state.call
        call.params = {"model": model_id[:256]}
        body = await gw.backend.model(model_id)
        await gw.audit.record(call.entry(200, "allow"))
        return Response(_json(body), media_type="application/json")

    @v1.post("/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def chat_completions(body: chat_schema, request: Request,  # type: ignore[valid-type]
                               principal: Principal = Depends(authorize)) -> Response:
        """OpenAI chat completions, stream or not: through the model's chat template, or to the upstream as sent."""
        gw = gateway(request)
        call: Call = request.state.call
        dump = body.model_dump(exclude_unset=True) if passthrough else body.model_dump(exclude_none=True)
        call.prompt = dump.pop("messages")
        call.params = dump
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise bad_request("Give max_tokens or max_completion_tokens, not both.", param="max_completion_tokens")
        max_tokens = body.max_completion_tokens or body.max_tokens
        _check_common(body, gw.settings, max_tokens,
                      "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        if body.top_logprobs and not body.logprobs:
            raise bad_request("logprobs must be true when top_logprobs is set.", param="top_logprobs")
        if max_tokens is not None:
            await _check_tokens(gw, principal, max_tokens * (body.n or 1), call.limits)
        _check_degradable(gw, principal)
        result = await gw.backend.chat(body, principal.degraded, hides_reasoning(principal, gw.settings))
        return await _respond(gw, call, result, _include_usage(body), "chat")

    @v1.post("/completions", response_model=TextCompletion,
             responses={200: {"content": {"text/event-stream": {}}}})
    async def completions(body: completion_schema, request: Request,  # type: ignore[valid-type]
                          principal: Principal = Depends(authorize)) -> Response:
        """OpenAI (legacy) completions. `echo=true, max_tokens=0, logprobs=k` scores the prompt itself: its
        token logprobs (the first is null) and top-k alternatives, as distillation needs."""
        gw = gateway(request)
        call: Call = request.state.call
        dump = body.model_dump(exclude_unset=True) if passthrough else body.model_dump(exclude_none=True)
        call.prompt = dump.pop("prompt", None)
        call.params = dump
        _check_common(body, gw.settings, body.max_tokens, "max_tokens")
        n = body.n or 1
        prompt = body.prompt
        prompts = 1 if isinstance(prompt, str) or not isinstance(prompt, list) or not prompt \
            or isinstance(prompt[0], int) else len(prompt)
        if not passthrough:
            if body.best_of is not None and body.best_of != n:
                raise bad_request("best_of is only supported equal to n.", param="best_of")
            if prompts * n > gw.settings.max_batch:
                raise bad_request(f"At most {gw.settings.max_batch} prompts × n per request.", param="prompt")
        if body.max_tokens:
            await _check_tokens(gw, principal, body.max_tokens * max(n, body.best_of or 1) * prompts, call.limits)
        _check_degradable(gw, principal)
        result = await gw.backend.completions(body, principal.degraded,
                                            hides_reasoning(principal, gw.settings))
        return await _respond(gw, call, result, _include_usage(body), "completions")

    @v1.post("/responses", responses={200: {"content": {"text/event-stream": {}}}})
    async def responses(body: ResponsesRequest, request: Request, principal: Principal = Depends(authorize)) -> Response:
        """OpenAI's Responses API, stream or not, passed to the upstream as sent."""
        gw = gateway(request)
        call: Call = request.state.call
        dump = body.model_dump(exclude_unset=True)
        prompt = {k: dump.pop(k) for k in ("instructions", "input") if k in dump}
        call.prompt, call.params = (prompt["input"] if list(prompt) == ["input"] else prompt), dump
        if not getattr(gw.backend, "passthrough", False):
            raise _unsupported_endpoint(request)
        _check_max_tokens(gw.settings, body.max_output_tokens, "max_output_tokens")
        if body.max_output_tokens is not None:
            await _check_tokens(gw, principal, body.max_output_tokens, call.limits)
        _check_degradable(gw, principal)
        result = await gw.backend.responses(body)
        if hides_reasoning(principal, gw.settings):
            result = hide_responses(result)
        return await _respond(gw, call, result, False, "responses")

    @v1.post("/embeddings")
    async def embeddings(body: EmbeddingsRequest, request: Request, principal: Principal = Depends(authorize)) -> Response:
        """Embeddings, passed to the upstream as sent (the audit keeps the input, not the vectors)."""
        gw = gateway(request)
        call: Call = request.state.call
        dump = body.model_dump(exclude_unset=True)
        call.prompt, call.params = dump.pop("input"), dump
        if not getattr(gw.backend, "passthrough", False):
            raise _unsupported_endpoint(request)
        _check_degradable(gw, principal)
        result = await gw.backend.embeddings(body)
        return await _respond(gw, call, result, False, "embeddings")

    return v1


@ops.get("/health")
async def health(request: Request) -> JSONResponse:
    """Liveness (always 200 while the process answers): "ok", "starting", or "degraded" naming what is down;
    and whether this replica runs the detector ("leader"), waits to take over ("standby"), or has it "off"."""
    gw = gateway(request)
    checks = await _checks(gw)
    status = "starting" if gw.backend is None else ("ok" if all(checks.values()) else "degraded")
    detector = "off" if gw.detection is None else ("leader" if gw.detection.leader else "standby")
    return JSONResponse({"status": status, "checks": {k: "ok" if v else "unavailable" for k, v in checks.items()},
                         "detector": detector})


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
