"""OpenAI's sampling adjustments as transformers logits processors, for the local backend.

- `logit_bias`: a bias added to chosen tokens' logits (-100 bans a token, 100 all but forces it).
- `frequency_penalty` and `presence_penalty`, as OpenAI defines them over the tokens generated so far:
  logit[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty, where c[j] counts token j in the
  completion (not the prompt).

Both compare by value, so requests that ask for the same adjustment still share one batch.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessor

from stillwatch.guard.errors import bad_request


class LogitBias(LogitsProcessor):
    """Adds `bias` to the logits of `token_ids` at every step."""

    def __init__(self, items: tuple[tuple[int, float], ...]):
        self.items = items
        self._ids = torch.tensor([i for i, _ in items], dtype=torch.long)
        self._bias = torch.tensor([b for _, b in items], dtype=torch.float32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self._ids] += self._bias.to(scores.dtype)
        return scores

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LogitBias) and other.items == self.items

    def __hash__(self) -> int:
        return hash(("logit_bias", self.items))


class Penalties(LogitsProcessor):
    """OpenAI's frequency and presence penalties over the generated tokens (eq. in the module docstring).

    `generate` hands a processor the whole sequence, prompt included; the prompt's width is the length it
    saw first. A new generation is recognised because its sequence does not extend the previous step's (the
    batcher runs one generation at a time, so steps of two generations never interleave)."""

    def __init__(self, frequency: float, presence: float):
        self.frequency, self.presence = float(frequency), float(presence)
        self._start = 0
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        last = self._last
        continues = (last is not None and input_ids.shape[0] == last.shape[0]
                     and input_ids.shape[1] == last.shape[1] + 1 and torch.equal(input_ids[:, :-1], last))
        if not continues:
            self._start = input_ids.shape[1]
        self._last = input_ids
        generated = input_ids[:, self._start:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Penalties) and (other.frequency, other.presence) == (self.frequency, self.presence)

    def __hash__(self) -> int:
        return hash(("penalties", self.frequency, self.presence))


def request_processors(req: Any, vocab_size: int) -> tuple[LogitsProcessor, ...]:
    """The processors a request's `logit_bias` and penalties ask for (none at their neutral values); 400 for
    a biased token outside the vocabulary."""
    out: list[LogitsProcessor] = []
    bias = getattr(req, "logit_bias", None)
    if bias:
        items = []
        for key, value in sorted(bias.items(), key=lambda kv: int(kv[0])):
            if int(key) >= vocab_size:
                raise bad_request(f"logit_bias names token {key}, outside the vocabulary of {vocab_size} tokens.",
                                  param="logit_bias")
            if value:
                items.append((int(key), float(value)))
        if items:
            out.append(LogitBias(tuple(items)))
    frequency, presence = getattr(req, "frequency_penalty", None) or 0.0, getattr(req, "presence_penalty", None) or 0.0
    if frequency or presence:
        out.append(Penalties(frequency, presence))
    return tuple(out)
