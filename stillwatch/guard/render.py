"""Build OpenAI response bodies and stream chunks from `Completion` objects (the local backend's output)."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

from stillwatch.teachers import Completion

FLOOR = -9999.0  # OpenAI's stand-in for -inf, which JSON cannot carry

Spell = Callable[[int], str]


def new_id(prefix: str) -> str:
    """A response id such as `chatcmpl-…`."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    """Seconds since the epoch, for `created`."""
    return int(time.time())


def finite(x: float | None) -> float | None:
    """A logprob JSON can carry."""
    if x is None:
        return None
    return x if math.isfinite(x) else FLOOR


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """OpenAI's usage object."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class Pieces:
    """The text of each token of a completion, so that streamed pieces join to exactly `Completion.text`."""

    texts: list[str]

    @classmethod
    def of(cls, completion: Completion, decode: Callable[[list[int]], str]) -> "Pieces":
        """Incremental decoding (multi-byte characters land on the token that completes them), clipped to the
        completion's text (a stop string is cut from the text but its tokens were generated)."""
        out, done, prev = [], 0, ""
        limit = len(completion.text)
        for i in range(len(completion.token_ids)):
            full = decode(completion.token_ids[: i + 1])
            piece = full[len(prev):] if full.startswith(prev) else ""
            prev = full if full.startswith(prev) else prev
            piece = piece[: max(0, limit - done)]
            done += len(piece)
            out.append(piece)
        if done < limit:  # whatever decoding could not attribute goes on the last token
            if out:
                out[-1] += completion.text[done:]
            else:
                out.append(completion.text)
        return cls(out)


def _top_entries(pos: list[tuple[int, float]] | None, spell: Spell, bytes_of: Callable[[str], list[int]]) -> list:
    return [{"token": spell(t), "logprob": finite(lp), "bytes": bytes_of(spell(t))} for t, lp in (pos or [])]


def chat_logprobs(c: Completion, spell: Spell, want_top: bool, start: int = 0, stop: int | None = None) -> dict:
    """`choice.logprobs` of a chat completion for tokens [start, stop)."""
    def bytes_of(token: str) -> list[int]:
        return list(token.encode("utf-8", "replace"))

    ids = c.token_ids[start:stop]
    tops = (c.top_logprobs or [])[start:stop] if want_top else [None] * len(ids)
    content = []
    for tid, lp, top in zip(ids, c.logprobs[start:stop], tops + [None] * (len(ids) - len(tops))):
        token = spell(tid)
        content.append({"token": token, "logprob": finite(lp), "bytes": bytes_of(token),
                        "top_logprobs": _top_entries(top, spell, bytes_of) if want_top else []})
    return {"content": content, "refusal": None}


def chat_body(rid: str, model: str, completions: list[Completion], spell: Spell, logprobs: bool,
              top: bool) -> dict:
    """A `chat.completion` object."""
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text, "refusal": None},
                "logprobs": chat_logprobs(c, spell, top) if logprobs else None, "finish_reason": c.finish_reason}
               for i, c in enumerate(completions)]
    prompt = completions[0].prompt_tokens if completions else 0
    return {"id": rid, "object": "chat.completion", "created": now(), "model": model, "choices": choices,
            "usage": usage(prompt, sum(c.completion_tokens for c in completions))}


def chat_chunks(rid: str, model: str, completions: list[Completion], decode: Callable[[list[int]], str],
                spell: Spell, logprobs: bool, top: bool) -> Iterator[dict]:
    """`chat.completion.chunk` objects: per choice a role chunk, one chunk per token, a finish chunk; then a
    usage chunk with no choices (the route drops it unless `stream_options.include_usage`)."""
    created = now()

    def chunk(choices: list, usage_: dict | None = None) -> dict:
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": choices, "usage": usage_}

    for i, c in enumerate(completions):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
        for t, piece in enumerate(Pieces.of(c, decode).texts):
            lp = chat_logprobs(c, spell, top, t, t + 1) if logprobs and t < len(c.token_ids) else None
            yield chunk([{"index": i, "delta": {"content": piece}, "logprobs": lp, "finish_reason": None}])
        yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}])
    prompt = completions[0].prompt_tokens if completions else 0
    yield chunk([], usage(prompt, sum(c.completion_tokens for c in completions)))


@dataclass
class PromptScores:
    """Logprobs of a prompt's own tokens (echo): the first token has none."""

    token_ids: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]


def legacy_logprobs(ids: list[int], lps: list[float | None], tops: list | None, k: int, spell: Spell,
                    pieces: list[str], offset: int = 0) -> dict:
    """`choice.logprobs` of a text completion: tokens, token_logprobs, top_logprobs, text_offset.

    As in OpenAI's API, each top_logprobs entry also holds the sampled token, so it has up to k+1 items."""
    tokens, offsets, top_out = [], [], []
    for i, tid in enumerate(ids):
        token = spell(tid)
        tokens.append(token)
        offsets.append(offset)
        offset += len(pieces[i]) if i < len(pieces) else 0
        if lps[i] is None:
            top_out.append(None)
            continue
        entry = {spell(t): finite(v) for t, v in ((tops[i] if tops and i < len(tops) and tops[i] else [])[:k])}
        entry.setdefault(token, finite(lps[i]))
        top_out.append(entry)
    return {"tokens": tokens, "token_logprobs": [finite(x) for x in lps], "top_logprobs": top_out,
            "text_offset": offsets}


@dataclass
class TextChoice:
    """One choice of a text completion, echo included."""

    text: str
    finish_reason: str
    logprobs: dict | None
    pieces: list[str]  # streamed text pieces, joined == text
    piece_logprobs: list[dict | None]


def text_choice(prompt_text: str | None, prompt_scores: PromptScores | None, c: Completion | None,
                decode: Callable[[list[int]], str], spell: Spell, k: int | None) -> TextChoice:
    """Join an echoed prompt (text and, when asked, its logprobs) with a generated completion."""
    ids: list[int] = []
    lps: list[float | None] = []
    tops: list = []
    pieces: list[str] = []
    if prompt_text is not None:
        p_pieces = Pieces.of(Completion(prompt_text, prompt_scores.token_ids, [], "stop", 0), decode).texts \
            if prompt_scores is not None else [prompt_text]
        pieces += p_pieces
        if prompt_scores is not None:
            ids += prompt_scores.token_ids
            lps += prompt_scores.logprobs
            tops += prompt_scores.top_logprobs
    if c is not None:
        pieces += Pieces.of(c, decode).texts
        ids += c.token_ids
        lps += c.logprobs
        tops += c.top_logprobs or [None] * len(c.token_ids)
    text = "".join(pieces)
    lp = legacy_logprobs(ids, lps, tops, k, spell, pieces) if k is not None else None
    per_piece: list[dict | None] = [None] * len(pieces)
    if lp is not None and len(pieces) == len(ids):
        per_piece = [{key: [val[i]] for key, val in lp.items()} for i in range(len(ids))]
    return TextChoice(text, c.finish_reason if c is not None else "length", lp, pieces, per_piece)


def text_body(rid: str, model: str, choices: list[TextChoice], prompt_tokens: int, completion_tokens: int) -> dict:
    """A `text_completion` object."""
    return {"id": rid, "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": i, "text": ch.text, "logprobs": ch.logprobs, "finish_reason": ch.finish_reason}
                        for i, ch in enumerate(choices)],
            "usage": usage(prompt_tokens, completion_tokens)}


def text_chunks(rid: str, model: str, choices: list[TextChoice], prompt_tokens: int,
                completion_tokens: int) -> Iterator[dict]:
    """Stream chunks of a text completion, then a usage chunk with no choices."""
    created = now()

    def chunk(choices_: list, usage_: dict | None = None) -> dict:
        return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices_,
                "usage": usage_}

    for i, ch in enumerate(choices):
        for piece, lp in zip(ch.pieces, ch.piece_logprobs):
            yield chunk([{"index": i, "text": piece, "logprobs": lp, "finish_reason": None}])
        yield chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": ch.finish_reason}])
    yield chunk([], usage(prompt_tokens, completion_tokens))
