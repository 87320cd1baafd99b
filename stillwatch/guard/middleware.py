"""One pure-ASGI middleware: cap the request body (413) and the time to send it (408), and time every
response to its last byte."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stillwatch.guard.accounts import key_id_of
from stillwatch.guard.errors import APIError, error_bytes, too_large, too_slow
from stillwatch.guard.logs import log_request, request_fields
from stillwatch.guard.metrics import Metrics

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/models", "/health",
          "/ready", "/metrics")


class LargeBodies:
    """At most `per_key` large requests of one key, and `total` of everyone, in flight at once: a key that
    sends megabyte bodies on many connections queues behind itself, and /health and small requests, which
    need no slot, keep the CPU they need. Waiting costs nothing (an asyncio semaphore)."""

    def __init__(self, total: int = 8, per_key: int = 2):
        self.total = asyncio.Semaphore(total)
        self.per_key = per_key
        self.keys: dict[str, tuple[asyncio.Semaphore, int]] = {}  # key id -> (its slots, requests using them)

    @asynccontextmanager
    async def slot(self, key: str | None) -> AsyncIterator[None]:
        name = key or "-"  # requests without a well-formed key share one
        sem, users = self.keys.get(name, (asyncio.Semaphore(self.per_key), 0))
        self.keys[name] = (sem, users + 1)
        try:
            async with sem, self.total:
                yield
        finally:
            sem, users = self.keys[name]
            if users <= 1:
                del self.keys[name]  # bounded by the requests in flight, never by the keys ever seen
            else:
                self.keys[name] = (sem, users - 1)


def _key_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return key_id_of(value.decode("latin-1").partition(" ")[2].strip())
    return None


def route_label(path: str) -> str:
    """A bounded label set: fuzzed paths must not grow the metrics without limit."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    return "/admin" if path.startswith("/admin") else "other"


class GuardMiddleware:
    """Reads a POST body up to `max_body` bytes within `body_timeout_s` before the app sees it (chunked bodies
    included), answering 413 past the cap and 408 past the time, before authentication and before any
    parsing: a client that trickles its body holds one connection, never a worker. Records status and
    latency per route."""

    def __init__(self, app: ASGIApp, max_body: int, metrics: Metrics, body_timeout_s: float = 30.0,
                 request_log: bool = False, log_prompts: bool = False, large_body: int = 256_000,
                 large_per_key: int = 2, large_total: int = 8):
        self.app, self.max_body, self.metrics, self.body_timeout_s = app, max_body, metrics, body_timeout_s
        # One structured line per request (serve --log-format json); prompts only when asked.
        self.request_log, self.log_prompts = request_log, log_prompts
        # Large bodies are parsed, validated, encoded and audited at milliseconds of CPU each, much of it
        # holding the GIL (json's C code does): they take a slot of `LargeBodies` first.
        self.large_body, self.large = large_body, LargeBodies(large_total, large_per_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})["t0"] = start
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                try:
                    async with asyncio.timeout(self.body_timeout_s):
                        body = await self._read(scope, receive)
                except TimeoutError:
                    await self._reject(send_and_note, too_slow(self.body_timeout_s))
                    return
                if body is None:
                    await self._reject(send_and_note, too_large(self.max_body))
                    return
                receive = _replay(body, receive)
                if len(body) > self.large_body:
                    async with self.large.slot(_key_id(scope)):
                        await self.app(scope, receive, send_and_note)
                    return
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight.dec()
            label = route_label(scope["path"])
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(elapsed)
            if self.request_log:
                call = scope["state"].get("call")
                log_request(request_fields(call, scope["method"], scope["path"], status, elapsed,
                                           self.log_prompts))

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body:
                        return None
                except ValueError:
                    pass
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _reject(self, send: Send, err: APIError) -> None:
        payload = error_bytes(err)
        await send({"type": "http.response.start", "status": err.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as streaming responses expect

    return replay
