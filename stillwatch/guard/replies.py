"""What the guard reads from an upstream's replies: token usage to charge, and what was answered to audit.

The replies themselves pass to the client as the upstream sent them; these readers only look. Four kinds:
chat and (legacy) completions, the Responses API, and embeddings. A tool call is part of what was answered,
so the audit keeps it: an answer with tool calls is audited as `{"content": ..., "tool_calls": [...]}`.
"""

from __future__ import annotations

from typing import Any, Literal

Kind = Literal["chat", "completions", "responses", "embeddings"]
# The Responses API's last event of a stream (it sends no [DONE]).
RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def count(value: Any) -> int:
    """A token count from a reply; TypeError for anything else (bool is an int to Python, "12" is not)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"not a token count: {value!r}")
    return value


def usage_of(kind: Kind, usage: Any) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) of a usage object in `kind`'s spelling; TypeError if not one."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise TypeError("usage is not an object")
    if kind == "responses":
        return count(usage.get("input_tokens")), count(usage.get("output_tokens"))
    if kind == "embeddings":
        return count(usage.get("prompt_tokens")), 0
    return count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))


def _text(value: Any) -> str:
    if value is not None and not isinstance(value, str):
        raise TypeError("content is not text")
    return value or ""


def _answer(content: str, calls: list) -> Any:
    return {"content": content, "tool_calls": calls} if calls else content


def chat_message_output(message: Any) -> Any:
    """What one chat answer says: its text, or its text with its tool calls."""
    if not isinstance(message, dict):
        raise TypeError("message is not an object")
    content = message.get("content")
    if isinstance(content, list):  # some servers answer in parts
        content = "".join(_text(p.get("text")) for p in content if isinstance(p, dict))
    calls = message.get("tool_calls") or ([message["function_call"]] if message.get("function_call") else [])
    if not isinstance(calls, list):
        raise TypeError("tool_calls is not a list")
    return _answer(_text(content), calls)


def responses_output(response: Any) -> Any:
    """What a Responses API `response` object says: its output text, with any function or tool calls."""
    if not isinstance(response, dict):
        raise TypeError("response is not an object")
    texts, calls = [], []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            raise TypeError("output item is not an object")
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(_text(part.get("text")))
        elif item.get("type") != "reasoning":
            calls.append(item)
    return _answer("".join(texts), calls)


def outputs_of(kind: Kind, body: Any) -> list[Any]:
    """The answers in a whole reply, one per choice; TypeError for a reply that is not of this kind."""
    if not isinstance(body, dict):
        raise TypeError("not an object")
    if kind == "embeddings":
        if not isinstance(body.get("data"), list):
            raise TypeError("no embeddings")
        return []
    if kind == "responses":
        return [responses_output(body)]
    out = []
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            raise TypeError("choice is not an object")
        out.append(chat_message_output(choice.get("message")) if "message" in choice else _text(choice.get("text")))
    return out


def stream_pieces(chunk: Any) -> list[tuple[int, str]]:
    """(choice index, text) of each piece in a chat or completions stream chunk; TypeError if not one."""
    if not isinstance(chunk, dict):
        raise TypeError("chunk is not an object")
    out = []
    for choice in chunk.get("choices") or ():
        index = count(choice.get("index", 0))
        piece = choice.get("text")
        if piece is None:
            piece = (choice.get("delta") or {}).get("content")
        if piece is not None and not isinstance(piece, str):
            raise TypeError("piece is not text")
        out.append((index, piece or ""))
    return out


def check_chunk(kind: Kind, chunk: Any) -> tuple[int, int] | None:
    """Check a stream chunk's shape before the client sees it, and return the usage it carries, if any."""
    if kind == "responses":
        if not isinstance(chunk, dict) or not isinstance(chunk.get("type"), str):
            raise TypeError("event is not an object with a type")
        if chunk["type"] in RESPONSES_TERMINAL:
            response = chunk.get("response")
            return usage_of(kind, response.get("usage") if isinstance(response, dict) else None)
        return None
    stream_pieces(chunk)
    return usage_of(kind, chunk.get("usage"))


class Delivered:
    """What a stream has handed to the client so far: the audit and the token charge of a stream that ends
    early (a hang-up, a broken or malformed upstream) are what was delivered, not what was generated."""

    def __init__(self, kind: Kind = "chat") -> None:
        self.kind = kind
        self.texts: dict[int, list[str]] = {}
        self.calls: dict[int, dict[Any, dict]] = {}  # choice -> tool call index -> the call as assembled
        self.pieces = 0
        self.final: Any = None  # the Responses API's finished response, when it came

    def note(self, chunk: dict) -> None:
        """Count one chunk that was sent."""
        if self.kind == "responses":
            self._note_event(chunk)
            return
        for index, piece in stream_pieces(chunk):
            if piece:
                self.texts.setdefault(index, []).append(piece)
                self.pieces += 1
        for choice in chunk.get("choices") or ():
            for call in (choice.get("delta") or {}).get("tool_calls") or ():
                if isinstance(call, dict):
                    self._note_call(count(choice.get("index", 0)), call.get("index", 0), call)

    def _note_call(self, choice: int, key: Any, delta: dict) -> None:
        call = self.calls.setdefault(choice, {}).setdefault(key, {"function": {"arguments": ""}})
        for name in ("id", "type"):
            if delta.get(name):
                call[name] = delta[name]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str) and function["arguments"]:
            call["function"]["arguments"] += function["arguments"]
            self.pieces += 1

    def _note_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self.texts.setdefault(0, []).append(event["delta"])
            self.pieces += 1
        elif kind == "response.function_call_arguments.delta" and isinstance(event.get("delta"), str):
            call = self.calls.setdefault(0, {}).setdefault(event.get("item_id"), {"arguments": ""})
            call["arguments"] += event["delta"]
            self.pieces += 1
        elif kind in RESPONSES_TERMINAL:
            self.final = event.get("response")

    def outputs(self) -> list[Any]:
        """The answers as delivered, one per choice."""
        if self.kind == "responses" and self.final is not None:
            return [responses_output(self.final)]
        indexes = sorted(set(self.texts) | set(self.calls))
        return [_answer("".join(self.texts.get(i, [])), list(self.calls.get(i, {}).values())) for i in indexes]
