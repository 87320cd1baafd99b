"""Two local stand-ins for real endpoints, on 127.0.0.1: a strict OpenAI-like one and a vLLM-like one.

Both answer `GET /v1/models` and chat and text completions with logprobs, and record every request body.

* `StrictOpenAIStub` rejects what OpenAI's API rejects: any request argument it does not know (400,
  "Unrecognized request argument supplied: NAME", type `invalid_request_error`), `top_logprobs` above 20 on
  chat and `logprobs` above 5 on completions. Tokens come back as strings with their UTF-8 `bytes`, and a
  character cut between two tokens comes back as OpenAI spells it: `bytes:\\xc3` with the raw byte.
* `VLLMStub` takes `return_tokens_as_token_ids` and then spells tokens `token_id:N` (ids of `tokenizer`).
* `RateLimitedStub` is the strict one behind a requests-per-window limit, answering as OpenAI does: its
  `x-ratelimit-*` headers on every answer, and a 429 `rate_limit_exceeded` (or `insufficient_quota`) over it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
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

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"content-type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
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


class RateLimitedStub(StrictOpenAIStub):
    """At most `limit` completions in any `per_s` seconds; each answer carries OpenAI's x-ratelimit headers,
    and one over the limit is a 429 naming the reset only there (no Retry-After, as OpenAI often answers).
    `spent=True` is an account without credit: every completion is 429 `insufficient_quota`."""

    def __init__(self, limit: int, per_s: float, spent: bool = False):
        super().__init__()
        self.limit, self.per_s, self.spent = limit, per_s, spent
        self.served: deque[float] = deque()  # times of the completions in the current window
        self.statuses: list[int] = []

    def answer(self, path: str, body: dict) -> tuple:
        now = time.monotonic()
        with self.lock:
            while self.served and now - self.served[0] >= self.per_s:
                self.served.popleft()
            if self.spent:
                self.statuses.append(429)
                return 429, {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota",
                                       "param": None, "code": "insufficient_quota"}}
            # OpenAI's reset is the time until the limit is whole again: when the newest request leaves it.
            reset = self.per_s - (now - self.served[-1]) if self.served else 0.0
            over = len(self.served) >= self.limit
            if not over:
                self.served.append(now)
            headers = {"x-ratelimit-limit-requests": str(self.limit),
                       "x-ratelimit-remaining-requests": str(max(0, self.limit - len(self.served))),
                       "x-ratelimit-reset-requests": f"{max(1, round(reset * 1000))}ms"}
            self.statuses.append(429 if over else 200)
        if over:
            return 429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                   "param": None, "code": "rate_limit_exceeded"}}, headers
        return (*super().answer(path, body), headers)
