"""Helpers for the guard's tests: a throwaway PostgreSQL database, Redis, and `stillwatch serve` subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

PG_ADMIN_URL = os.environ.get("STILLWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("STILLWATCH_TEST_REDIS", "redis://127.0.0.1:6379")


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test (dropped afterwards); skips if there is no server."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'stillwatch[postgres]')")
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure means: no server to test against
        pytest.skip(f"PostgreSQL is unreachable at {PG_ADMIN_URL}: {type(exc).__name__}: {exc}".splitlines()[0])
    name = f"sw_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_database(PG_ADMIN_URL, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_redis() -> str:
    """The Redis URL for tests; skips if Redis does not answer a PING."""
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis is unreachable at {REDIS_URL}: {type(exc).__name__}")
    return REDIS_URL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A `stillwatch serve` subprocess on 127.0.0.1 (its output goes to a log file)."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.args, self.env, self.log_path = args, env, log_path
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        """Start and wait until /health answers."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> Server:
        """Start the process without waiting for it."""
        cmd = [sys.executable, "-m", "stillwatch", "serve", *self.args, "--host", "127.0.0.1",
               "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 60.0) -> Server:
        """Wait until /health answers (raises with the server's log if it dies or hangs)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout} s:\n{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --- an instant OpenAI-compatible upstream ------------------------------------------------------------------
def mock_reply(prompt: str) -> str:
    """What the mock upstream answers to `prompt` (deterministic, so a test can check what was served)."""
    return "-> " + prompt.strip()[::-1]


def mock_upstream_app():  # -> starlette.applications.Starlette
    """A tiny OpenAI-compatible server: /v1/models, /v1/completions and /v1/chat/completions (stream too)."""
    import json

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def usage(prompt: str, text: str) -> dict:
        return {"prompt_tokens": len(prompt), "completion_tokens": len(text),
                "total_tokens": len(prompt) + len(text)}

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "mock", "object": "model", "created": 0,
                                                         "owned_by": "test"}]})

    async def complete(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        chat = request.url.path.endswith("/chat/completions")
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        prompt = prompt if isinstance(prompt, str) else json.dumps(prompt)
        text = mock_reply(prompt)
        base = {"id": "mock-1", "created": 0, "model": body.get("model", "mock")}
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None})
            return JSONResponse({**base, "object": "chat.completion" if chat else "text_completion",
                                 "choices": [choice], "usage": usage(prompt, text)})

        def chunk(piece: str | None, finish: str | None) -> bytes:
            choice = ({"index": 0, "delta": {"content": piece} if piece is not None else {},
                       "finish_reason": finish} if chat else {"index": 0, "text": piece or "",
                                                              "finish_reason": finish})
            obj = {**base, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice]}
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        async def events():  # type: ignore[no-untyped-def]
            for i in range(0, len(text), 4):
                yield chunk(text[i:i + 4], None)
            yield chunk(None, "stop")
            tail = {**base, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [],
                    "usage": usage(prompt, text)}
            yield b"data: " + json.dumps(tail).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", complete, methods=["POST"]),
                             Route("/v1/chat/completions", complete, methods=["POST"])])


@contextmanager
def mock_upstream() -> Iterator[str]:
    """Run the mock upstream in a thread of this process; yields its base URL (".../v1")."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(mock_upstream_app(), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the mock upstream did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process (fast); returns (exit code, stdout, stderr) as pytest's capsys caught them."""
    from stillwatch.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
