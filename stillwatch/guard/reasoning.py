"""Hide reasoning: serve the final answer without its trace, the way reasoning APIs withhold chain of thought.

Where the trace is:
- a `<think>…</think>` span (open-weights reasoning models), closed or cut off by max_tokens;
- an upstream's `reasoning_content` field (DeepSeek-style APIs), dropped from messages and stream deltas;
- for the built-in reasoning tasks, everything before the answer mark `->`; a trace cut off before the mark
  is all reasoning, so a low max_tokens cannot pull out all but the last step.

Hidden tokens were generated and are charged: usage keeps them in `completion_tokens` and names them in
`completion_tokens_details.reasoning_tokens`, as OpenAI's reasoning models do. What the audit keeps is what the
client was served.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, AsyncIterator, Callable

from stillwatch.teachers import Completion

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def hidden_span(text: str, marker: str | None = None) -> tuple[int, int] | None:
    """The [start, end) characters of `text` that are reasoning, or None when nothing is.

    `marker` is the answer mark of a reasoning-task prompt: the trace is everything before it."""
    start = text.find(THINK_OPEN)
    if start >= 0:
        close = text.find(THINK_CLOSE, start)
        end = len(text) if close < 0 else close + len(THINK_CLOSE)
        while end < len(text) and text[end].isspace():
            end += 1
        return start, end
    if marker:
        at = text.find(marker)
        if at < 0:
            return (0, len(text)) if text else None
        return (0, at) if at > 0 else None
    return None


def withhold(completion: Completion, pieces: list[str], marker: str | None = None) -> tuple[Completion, int]:
    """`completion` without the tokens that lie wholly inside its reasoning span, and how many were dropped.

    `pieces` are the texts of its tokens (joined, the completion's text). A token that straddles the span's
    edge is kept, so the served text is always exactly the kept tokens' text."""
    span = hidden_span(completion.text, marker)
    if span is None:
        return completion, 0
    keep: list[int] = []
    pos = 0
    for i in range(len(completion.token_ids)):
        piece = pieces[i] if i < len(pieces) else ""
        begin, pos = pos, pos + len(piece)
        inside = span[0] <= begin and pos <= span[1] and (piece or begin < span[1])
        if not inside:
            keep.append(i)
    tops = completion.top_logprobs
    kept = replace(
        completion,
        text="".join(pieces[i] for i in keep if i < len(pieces)),
        token_ids=[completion.token_ids[i] for i in keep],
        logprobs=[completion.logprobs[i] for i in keep if i < len(completion.logprobs)],
        top_logprobs=None if tops is None else [tops[i] for i in keep if i < len(tops)],
    )
    return kept, len(completion.token_ids) - len(keep)


def add_reasoning_usage(usage: dict | None, hidden: int, completion_tokens: int | None = None) -> None:
    """Name `hidden` reasoning tokens in a usage object (in place); `completion_tokens` restores the total."""
    if usage is None:
        return
    if completion_tokens is not None:
        usage["completion_tokens"] = completion_tokens
        usage["total_tokens"] = int(usage.get("prompt_tokens") or 0) + completion_tokens
    details = usage.get("completion_tokens_details")
    if not isinstance(details, dict):
        details = usage["completion_tokens_details"] = {}
    if hidden or "reasoning_tokens" not in details:
        details["reasoning_tokens"] = int(details.get("reasoning_tokens") or 0) + hidden


def _strip_text(text: Any) -> tuple[Any, int]:
    if not isinstance(text, str):
        return text, 0
    span = hidden_span(text)
    if span is None:
        return text, 0
    return text[:span[0]] + text[span[1]:], span[1] - span[0]


def _strip_logprobs(logprobs: Any, chars: int) -> int:
    """Drop the leading chat logprob entries that spell the first `chars` hidden characters; how many went."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list) or chars <= 0:
        return 0
    dropped, seen = 0, 0
    for entry in content:
        token = entry.get("token") if isinstance(entry, dict) else None
        if not isinstance(token, str) or seen + len(token) > chars:
            break
        seen += len(token)
        dropped += 1
    del content[:dropped]
    return dropped


def strip_body(body: dict) -> tuple[list[str], int]:
    """Remove reasoning from an upstream reply in place: `reasoning_content`, leading `<think>` spans and their
    logprob entries. The served texts and the hidden tokens (counted from logprobs where given, else the
    upstream's own reasoning_tokens, else about four characters a token)."""
    texts, hidden = [], 0
    for choice in body.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        holder, key = (choice["message"], "content") if isinstance(choice.get("message"), dict) else (choice, "text")
        reasoning = holder.pop("reasoning_content", None) if holder is not choice else None
        holder.pop("reasoning", None)
        text, chars = _strip_text(holder.get(key))
        holder[key] = text
        texts.append(text or "")
        counted = _strip_logprobs(choice.get("logprobs"), chars)
        hidden += counted or (chars + 3) // 4
        if isinstance(reasoning, str):
            hidden += (len(reasoning) + 3) // 4
    usage = body.get("usage")
    if isinstance(usage, dict):
        known = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") \
            if isinstance(usage.get("completion_tokens_details"), dict) else None
        add_reasoning_usage(usage, 0 if known else hidden)
    return texts, hidden


class StreamHider:
    """Removes reasoning from a stream of chunks: `reasoning_content` deltas, and a `<think>` span at the start
    of each choice's content, however the tags are split across chunks. Counts the pieces it withheld."""

    def __init__(self) -> None:
        self.state: dict[int, str] = {}  # choice index -> "start" | "inside" | "trim" | "after"
        self.held: dict[int, str] = {}
        self.hidden = 0

    def _content(self, index: int, piece: str) -> str:
        state = self.state.get(index, "start")
        buffer = self.held.get(index, "") + piece
        if state == "start":
            lead = buffer.lstrip()
            if lead.startswith(THINK_OPEN):
                state, buffer = "inside", lead[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(lead):
                self.held[index] = buffer  # nothing yet, or perhaps the start of the tag: wait for more
                return ""
            else:
                self.state[index], self.held[index] = "after", ""
                return buffer
        if state == "inside":
            self.hidden += 1
            close = buffer.find(THINK_CLOSE)
            if close < 0:
                # Keep only what could be the start of the closing tag.
                self.state[index], self.held[index] = "inside", buffer[-(len(THINK_CLOSE) - 1):]
                return ""
            state, buffer = "trim", buffer[close + len(THINK_CLOSE):]
        if state == "trim":  # the blank after the block goes too, as in a whole reply
            buffer = buffer.lstrip()
            self.state[index], self.held[index] = ("after" if buffer else "trim"), ""
            return buffer
        self.held[index] = ""
        return buffer

    def _flush(self, choice: dict, index: int) -> None:
        held, self.held[index] = self.held.get(index, ""), ""
        if not held:
            return
        delta = choice.get("delta")
        if isinstance(delta, dict):
            delta["content"] = held + (delta.get("content") or "")
        else:
            choice["text"] = held + (choice.get("text") or "")

    def chunk(self, chunk: dict) -> dict:
        """The chunk as the client may see it (changed in place)."""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
            delta = choice.get("delta")
            if isinstance(delta, dict):
                for key in ("reasoning_content", "reasoning"):
                    if isinstance(delta.pop(key, None), str):
                        self.hidden += 1
                if isinstance(delta.get("content"), str):
                    delta["content"] = self._content(index, delta["content"])
                    if self.state.get(index) not in ("after", "trim") and choice.get("logprobs") is not None:
                        choice["logprobs"] = None
            elif isinstance(choice.get("text"), str):
                choice["text"] = self._content(index, choice["text"])
                if self.state.get(index) not in ("after", "trim"):
                    choice["logprobs"] = None
            if choice.get("finish_reason") and self.state.get(index, "start") == "start":
                self._flush(choice, index)  # a held "<th" that never became a tag was content after all
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            details = usage.get("completion_tokens_details")
            known = details.get("reasoning_tokens") if isinstance(details, dict) else None
            add_reasoning_usage(usage, 0 if known else self.hidden)
        return chunk


async def hide_stream(chunks: AsyncIterator[dict], hider: StreamHider | None = None) -> AsyncIterator[dict]:
    """`chunks` with their reasoning removed."""
    hider = hider or StreamHider()
    async for chunk in chunks:
        yield hider.chunk(chunk)


def hide_result(result: Any) -> Any:
    """Hide the reasoning of a proxied `Result` (a body or a stream), in place; returns it."""
    if result.chunks is not None:
        result.chunks = hide_stream(result.chunks)
    elif isinstance(result.body, dict):
        texts, _ = strip_body(result.body)
        # An answer with tool calls is audited as {"content", "tool_calls"}: only its content changes.
        result.texts = [{**was, "content": now} if isinstance(was, dict) else now
                        for was, now in zip(result.texts, texts)] if len(result.texts) == len(texts) else texts
        result.raw = None  # the upstream's bytes still hold the reasoning
    return result


def task_model(model_dir: Any) -> bool:
    """Whether a model directory holds a model trained on the built-in tasks (its card names them): only there
    does the answer mark end a trace."""
    if model_dir is None:
        return False
    from stillwatch.errors import StillwatchError
    from stillwatch.models import read_card

    try:
        return bool(read_card(model_dir).get("tasks"))
    except (OSError, ValueError, StillwatchError):
        return False


def withhold_all(completions: list[Completion], asked: str, decode: Callable[[list[int]], str],
                 answer_mark: str | None) -> tuple[list[Completion], int]:
    """Every completion of one prompt without its reasoning, and the tokens hidden in all.

    On a built-in reasoning-task prompt everything before the answer mark is trace (all of it if the mark never
    came); on any other prompt only a `<think>` span is, or the text before a mark the model wrote anyway."""
    from stillwatch.guard.render import Pieces
    from stillwatch.tasks import task_for_prompt

    task = task_for_prompt(asked.lstrip()) if answer_mark else None
    on_task = task is not None and task.kind == "reasoning"
    served, hidden = [], 0
    for c in completions:
        marker = answer_mark if on_task or (answer_mark and answer_mark in c.text) else None
        kept, dropped = withhold(c, Pieces.of(c, decode).texts, marker)
        served.append(kept)
        hidden += dropped
    return served, hidden


def _drop_reasoning_items(response: Any) -> int:
    """Remove the Responses API's `reasoning` output items (and <think> spans in output text); tokens hidden."""
    if not isinstance(response, dict) or not isinstance(response.get("output"), list):
        return 0
    hidden = 0
    kept = []
    for item in response["output"]:
        if isinstance(item, dict) and item.get("type") == "reasoning":
            hidden += sum((len(str(p.get("text", ""))) + 3) // 4 for p in item.get("summary") or ()
                          if isinstance(p, dict))
            continue
        for part in (item.get("content") or ()) if isinstance(item, dict) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                part["text"], chars = _strip_text(part["text"])
                hidden += (chars + 3) // 4
        kept.append(item)
    response["output"] = kept
    usage = response.get("usage")
    if isinstance(usage, dict):
        details = usage.setdefault("output_tokens_details", {})
        if isinstance(details, dict) and not details.get("reasoning_tokens"):
            details["reasoning_tokens"] = hidden
    return hidden


async def _hide_events(events: AsyncIterator[dict]) -> AsyncIterator[dict]:
    async for event in events:
        kind = str(event.get("type", ""))
        if kind.startswith("response.reasoning"):
            continue  # reasoning deltas and summaries never leave
        item = event.get("item")
        if isinstance(item, dict) and item.get("type") == "reasoning":
            continue
        if isinstance(event.get("response"), dict):
            _drop_reasoning_items(event["response"])
        yield event


def hide_responses(result: Any) -> Any:
    """Hide the reasoning of a proxied Responses API `Result` (its body or its event stream), in place."""
    if result.chunks is not None:
        result.chunks = _hide_events(result.chunks)
    elif isinstance(result.body, dict):
        _drop_reasoning_items(result.body)
        result.raw = None
    return result
