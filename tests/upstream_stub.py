"""A stub OpenAI-compatible upstream on 127.0.0.1: it records every request body it receives and answers with
fixed replies (tool calls, JSON mode, the Responses API, embeddings, streams), so that a test can check that
what went through the gateway arrived unchanged, both ways."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}

CHAT_TOOLS = {
    "id": "chatcmpl-stub1", "object": "chat.completion", "created": 1700000000, "model": "stub-model",
    "system_fingerprint": "fp_stub", "service_tier": "default",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                 "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [TOOL_CALL]}}],
    "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40,
              "completion_tokens_details": {"reasoning_tokens": 0}},
}
CHAT_JSON = {
    "id": "chatcmpl-stub2", "object": "chat.completion", "created": 1700000001, "model": "stub-model",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                 "message": {"role": "assistant", "content": '{"answer": 42}', "refusal": None}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
}
COMPLETION = {
    "id": "cmpl-stub", "object": "text_completion", "created": 1700000002, "model": "stub-model",
    "choices": [{"index": 0, "text": " world", "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
}
RESPONSE = {
    "id": "resp_stub", "object": "response", "created_at": 1700000003, "status": "completed", "model": "stub-model",
    "output": [
        {"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hello there.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_2", "name": "lookup",
         "arguments": '{"q":"x"}', "status": "completed"},
    ],
    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
    "usage": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18,
              "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
}
EMBEDDINGS = {
    "object": "list", "model": "stub-embed",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]},
             {"object": "embedding", "index": 1, "embedding": [1.0, 0.0, -1.0]}],
    "usage": {"prompt_tokens": 5, "total_tokens": 5},
}
MODELS = {"object": "list", "data": [{"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub"},
                                     {"id": "org/stub-embed", "object": "model", "created": 0, "owned_by": "stub"}]}


def chat_chunks() -> list[dict]:
    """A streamed answer: some text, then a tool call in pieces, then the usage chunk."""
    base = {"id": "chatcmpl-stub3", "object": "chat.completion.chunk", "created": 1700000004, "model": "stub-model"}
    pieces = [
        {"role": "assistant", "content": ""}, {"content": "Let me "}, {"content": "check."},
        {"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
    ]
    out = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None, "logprobs": None}]} for d in pieces]
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls", "logprobs": None}]})
    out.append({**base, "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}})
    return out


def response_events() -> list[dict]:
    """A streamed Responses API answer."""
    created = {**RESPONSE, "status": "in_progress", "output": [], "usage": None}
    item = {"type": "message", "id": "msg_1", "status": "in_progress", "role": "assistant", "content": []}
    return [
        {"type": "response.created", "sequence_number": 0, "response": created},
        {"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": item},
        {"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": "Hello ", "logprobs": []},
        {"type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": "there.", "logprobs": []},
        {"type": "response.completed", "sequence_number": 4, "response": RESPONSE},
    ]


def app(received: list[dict]) -> Any:
    """The stub as a Starlette app; every request body is appended to `received`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def sse(events: list[dict], named: bool = False, done: bool = True) -> StreamingResponse:
        async def body():  # type: ignore[no-untyped-def]
            for event in events:
                head = f"event: {event['type']}\n".encode() if named else b""
                yield head + b"data: " + json.dumps(event).encode() + b"\n\n"
            if done:
                yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    async def chat(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        received.append(body)
        if body.get("stream"):
            return sse(chat_chunks())
        return JSONResponse(CHAT_JSON if body.get("response_format") else CHAT_TOOLS)

    async def completions(request: Request):  # type: ignore[no-untyped-def]
        received.append(await request.json())
        return JSONResponse(COMPLETION)

    async def responses(request: Request):  # type: ignore[no-untyped-def]
        body = await request.json()
        received.append(body)
        if body.get("stream"):
            return sse(response_events(), named=True, done=False)
        return JSONResponse(RESPONSE)

    async def embeddings(request: Request):  # type: ignore[no-untyped-def]
        received.append(await request.json())
        return JSONResponse(EMBEDDINGS)

    async def models(request: Request):  # type: ignore[no-untyped-def]
        return JSONResponse(MODELS)

    async def model(request: Request):  # type: ignore[no-untyped-def]
        wanted = request.path_params["model_id"]
        for card in MODELS["data"]:
            if card["id"] == wanted:
                return JSONResponse(card)
        return JSONResponse({"error": {"message": f"The model '{wanted}' does not exist", "type":
                                       "invalid_request_error", "param": "model", "code": "model_not_found"}},
                            status_code=404)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/responses", responses, methods=["POST"]),
                             Route("/v1/embeddings", embeddings, methods=["POST"]),
                             Route("/v1/models", models), Route("/v1/models/{model_id:path}", model)])


class StubUpstream:
    """Runs the stub on a free 127.0.0.1 port in a thread; `received` holds the bodies it was sent."""

    def __init__(self) -> None:
        import uvicorn

        from guard_support import free_port

        self.received: list[dict] = []
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app(self.received), host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "StubUpstream":
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
