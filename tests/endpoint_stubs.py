"""Two local stand-ins for real endpoints, on 127.0.0.1: a strict OpenAI-like one and a vLLM-like one.

Both answer `GET /v1/models` and chat and text completions with logprobs, and record every request body.

* `StrictOpenAIStub` rejects what OpenAI's API rejects: any request argument it does not know (400,
  "Unrecognized request argument supplied: NAME", type `invalid_request_error`), `top_logprobs` above 20 on
  chat and `logprobs` above 5 on completions. Tokens come back as strings with their UTF-8 `bytes`, and a
  character cut between two tokens comes back as OpenAI spells it: `bytes:\\xc3` with the raw byte.
* `VLLMStub` takes `return_tokens_as_token_ids` and then spells tokens `token_id:N` (ids of `tokenizer`).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The request arguments OpenAI's chat and completions APIs know (what the strict stub accepts).
CHAT_ARGS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed",
             "stop", "logprobs", "top_logprobs", "stream", "stream_options", "user", "frequency_penalty",
             "presence_penalty", "logit_bias", "response_format", "tools", "tool_choice", "parallel_tool_calls",
             "store", "metadata", "service_tier", "modalities", "audio", "prediction", "reasoning_effort"}
COMPLETION_ARGS = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "seed", "stop", "logprobs",
                   "echo", "best_of", "stream", "stream_options", "user", "frequency_penalty", "presence_penalty",
                   "logit_bias", "suffix"}
# The reply every chat request gets: an accented letter cut into its two UTF-8 bytes, as BPE may cut it.
REPLY_PIECES: list[bytes] = [b"1+2", b"=3", b" ->", b" 3", b" caf", b"\xc3", b"\xa9"]


def openai_error(message: str, param: str | None = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


class _Stub:
    owner = "stub"

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []  # (path, body)
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                with stub.lock:
                    stub.requests.append((self.path, {}))
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": "teacher", "object": "model", "created": 0, "owned_by": stub.owner}]})
                else:
                    self._send(404, openai_error(f"Invalid URL (GET {self.path})"))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                with stub.lock:
                    stub.requests.append((self.path, body))
                self._send(*stub.answer(self.path, body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def bodies(self, endpoint: str) -> list[dict]:
        """Bodies POSTed to a path ending in `endpoint`."""
        with self.lock:
            return [b for p, b in self.requests if p.endswith(endpoint)]

    # -- replies ----------------------------------------------------------------------------------------------

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        if path.endswith("/chat/completions"):
            return 200, self.chat(body)
        if path.endswith("/completions"):
            return 200, self.completion(body)
        return 404, openai_error(f"Invalid URL (POST {path})")

    def pieces(self, body: dict) -> list[Any]:
        return REPLY_PIECES

    def spell(self, piece: Any, body: dict) -> str:
        """A token as OpenAI spells it: its text, or `bytes:\\xNN` for bytes that are not whole characters."""
        try:
            return piece.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)

    def raw(self, piece: Any) -> list[int]:
        return list(piece)

    def text(self, pieces: list[Any]) -> str:
        return b"".join(pieces).decode("utf-8")

    def alternatives(self, piece: Any) -> list[Any]:
        return [piece, b" 4", b"=2"]

    def chat(self, body: dict) -> dict:
        pieces, k = self.pieces(body), int(body.get("top_logprobs") or 0)

        def entry(piece: Any, lp: float) -> dict:
            return {"token": self.spell(piece, body), "logprob": lp, "bytes": self.raw(piece)}

        content = [{**entry(p, -0.1), "top_logprobs": [entry(a, -0.1 - j) for j, a in
                                                        enumerate(self.alternatives(p)[:k])]} for p in pieces]
        choices = [{"index": i, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": self.text(pieces), "refusal": None},
                    "logprobs": {"content": content, "refusal": None} if body.get("logprobs") else None}
                   for i in range(int(body.get("n") or 1))]
        return {"id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": body.get("model"),
                "choices": choices, "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces) * len(choices),
                                              "total_tokens": 7 + len(pieces) * len(choices)}}

    def completion(self, body: dict) -> dict:
        pieces, k = self.pieces(body), int(body.get("logprobs") or 0)
        tokens = [self.spell(p, body) for p in pieces]
        top = [{self.spell(a, body): -0.1 - j for j, a in enumerate(self.alternatives(p)[:k])} for p in pieces]
        choices = [{"index": i, "text": self.text(pieces), "finish_reason": "stop",
                    "logprobs": {"tokens": tokens, "token_logprobs": [-0.1] * len(pieces), "top_logprobs": top,
                                 "text_offset": list(range(len(pieces)))}}
                   for i in range(int(body.get("n") or 1))]
        return {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": body.get("model"),
                "choices": choices, "usage": {"prompt_tokens": 7, "completion_tokens": len(pieces),
                                              "total_tokens": 7 + len(pieces)}}


class StrictOpenAIStub(_Stub):
    """Behaves like OpenAI's API: unknown arguments and over-limit top k are a 400 with OpenAI's error body."""

    owner = "system"

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        known = CHAT_ARGS if path.endswith("/chat/completions") else COMPLETION_ARGS
        for name in body:
            if name not in known:
                return 400, openai_error(f"Unrecognized request argument supplied: {name}")
        if path.endswith("/chat/completions") and int(body.get("top_logprobs") or 0) > 20:
            return 400, openai_error(f"Invalid 'top_logprobs': integer above maximum value. Expected a value "
                                     f"<= 20, but got {body['top_logprobs']} instead.", "top_logprobs")
        if not path.endswith("/chat/completions") and int(body.get("logprobs") or 0) > 5:
            return 400, openai_error("Invalid 'logprobs': integer above maximum value. Expected a value <= 5.",
                                     "logprobs")
        return super().answer(path, body)


class VLLMStub(_Stub):
    """Behaves like vLLM: takes `return_tokens_as_token_ids` and then spells tokens `token_id:N`."""

    owner = "vllm"

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def pieces(self, body: dict) -> list[int]:
        return self.tokenizer("1+2=3 -> 3", add_special_tokens=False)["input_ids"]

    def spell(self, piece: int, body: dict) -> str:
        if body.get("return_tokens_as_token_ids"):
            return f"token_id:{piece}"
        return self.tokenizer.decode([piece])

    def raw(self, piece: int) -> list[int]:
        return list(self.tokenizer.decode([piece]).encode())

    def text(self, pieces: list[int]) -> str:
        return self.tokenizer.decode(pieces)

    def alternatives(self, piece: int) -> list[int]:
        return [piece, (piece + 1) % len(self.tokenizer), (piece + 2) % len(self.tokenizer)]
