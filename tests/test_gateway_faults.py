"""Faults give clear errors, never a 500: a malformed, oversized, broken or slow upstream, a client that hangs
up, a body that never arrives. The audit holds exactly what was delivered, and that is what is charged."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway_helpers import ServerThread
from guard_support import free_port
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.audit import query as audit_query
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.settings import GuardSettings

PIECES = [f"w{i} " for i in range(40)]


def _upstream_app():  # type: ignore[no-untyped-def]
    """An OpenAI-compatible upstream that misbehaves as the prompt tells it to ("mode:NAME")."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    def event(obj) -> bytes:  # type: ignore[no-untyped-def]
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    def chunk(i: int, piece: str, index=0) -> dict:  # type: ignore[no-untyped-def]
        return {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": index, "delta": {"content": piece}, "finish_reason": None}]}

    async def chat(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        mode = body["messages"][-1]["content"].removeprefix("mode:")
        if not body.get("stream"):
            replies = {
                "list": [1, 2],
                "content": {"choices": [{"index": 0, "message": {"role": "assistant", "content": 5}}]},
                "usage": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                          "usage": {"prompt_tokens": "12", "completion_tokens": 1}},
                "big": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 5000}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
                "nousage": {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a" * 40},
                                         "finish_reason": "stop"}]},
                "ok": {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}},
            }
            if mode == "notjson":
                return Response(b"<html>oops</html>", media_type="text/html")
            return JSONResponse(replies[mode])

        async def events():  # type: ignore[no-untyped-def]
            for i, piece in enumerate(PIECES[:5]):
                yield event(chunk(i, piece))
            if mode == "badindex":
                yield event(chunk(5, "bad", index="zero"))
            elif mode == "listchunk":
                yield event([1, 2])
            elif mode == "badusage":
                yield event({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": "many"}})
            elif mode == "cut":
                return  # the upstream dies: no usage, no [DONE]
            elif mode == "nousage":
                yield b"data: [DONE]\n\n"  # a whole stream that never says how many tokens it had
                return
            for i, piece in enumerate(PIECES[5:], start=5):
                if mode == "slow":
                    await asyncio.sleep(0.05)
                yield event(chunk(i, piece))
            yield event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(PIECES)}})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    import uvicorn

    root = tmp_path_factory.mktemp("faults")
    port = free_port()
    upstream = uvicorn.Server(uvicorn.Config(_upstream_app(), host="127.0.0.1", port=port, log_level="warning",
                                             lifespan="off"))
    thread = threading.Thread(target=upstream.run, daemon=True)
    thread.start()
    while not upstream.started:
        time.sleep(0.02)
    db = f"sqlite:///{root / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    key = AccountStore(engine).create_key("alice")[1]
    settings = GuardSettings(upstream=f"http://127.0.0.1:{port}/v1", db_url=db, max_upstream_bytes=4000,
                             body_timeout_s=0.5)
    from stillwatch.guard.app import create_app

    with ServerThread(create_app(settings)) as server:
        yield {"base": server.url, "key": key, "engine": engine, "port": server.port}
    upstream.should_exit = True
    thread.join(timeout=10)
    engine.dispose()


def _chat(gw, mode: str, stream: bool = False, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {"model": "m", "stream": stream, "messages": [{"role": "user", "content": f"mode:{mode}"}], **kwargs}
    return httpx.post(gw["base"] + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {gw['key']}"})


def _last_record(gw) -> dict:  # type: ignore[no-untyped-def]
    for _ in range(50):  # the 499 record of a hang-up is written after the response ends
        rows = audit_query(gw["engine"], account="alice", limit=1)
        if rows:
            return rows[0]
        time.sleep(0.05)
    raise AssertionError("no audit record")


def _events(response: httpx.Response) -> list:
    return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("mode", ["list", "content", "usage", "notjson"])
def test_malformed_upstream_replies_are_502(gw, mode: str) -> None:
    r = _chat(gw, mode)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "upstream_error"
    assert _last_record(gw)["status"] == 502


def test_oversized_upstream_reply_is_502(gw) -> None:
    r = _chat(gw, "big")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_response_too_large"
    assert _chat(gw, "ok").json()["choices"][0]["message"]["content"] == "fine"


@pytest.mark.parametrize("mode", ["badindex", "listchunk", "badusage", "cut"])
def test_a_broken_upstream_stream_ends_with_an_error_event_and_is_audited_as_delivered(gw, mode: str) -> None:
    r = _chat(gw, mode, stream=True)
    assert r.status_code == 200
    events = _events(r)
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["type"] == "upstream_error"
    delivered = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                        for e in events[:-1] if json.loads(e).get("choices"))
    assert delivered == "".join(PIECES[:5])
    record = _last_record(gw)
    assert record["status"] == 502 and record["completion"] == delivered
    assert record["completion_tokens"] == 5  # charged for what was delivered, not 0


def test_a_client_that_hangs_up_is_charged_for_what_it_was_sent(gw) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "mode:slow"}]}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", gw["base"] + "/v1/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {gw['key']}"}) as r:
            got = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    got += 1
                if got >= 8:
                    break
    time.sleep(1.0)
    record = _last_record(gw)
    assert record["status"] == 499
    assert 8 <= record["completion_tokens"] < len(PIECES)  # neither 0 nor the whole completion
    assert record["completion"].startswith("".join(PIECES[:8]))


def test_a_body_that_never_arrives_gets_408(gw) -> None:
    with socket.create_connection(("127.0.0.1", gw["port"]), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"model\"")
        began = time.monotonic()
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 408") and "request_timeout" in reply
    assert time.monotonic() - began < 5


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_that_reports_no_usage_is_charged_an_estimate_not_nothing(gw, stream: bool) -> None:
    response = _chat(gw, "nousage", stream=stream)
    assert response.status_code == 200
    record = _last_record(gw)
    assert record["status"] == 200 and record["prompt_tokens"] >= len("mode:nousage") // 4
    # Stream: one piece per token; reply: about four characters a token.
    assert record["completion_tokens"] == (5 if stream else 10)
