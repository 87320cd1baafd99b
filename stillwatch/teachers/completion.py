"""The one result type that flows through every stage: teachers, the gateway backend and the harvest store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]
UNKNOWN_ID = -1  # a top-k candidate known by its string only (see Completion.top_tokens)


@dataclass
class Completion:
    """One sampled completion with its per-token log-probabilities.

    `top_logprobs[i]` holds the k most likely (token id, logprob) pairs at position i of the completion,
    under the model's unprocessed distribution, best first.

    `tokens` and `top_tokens` (parallel to `token_ids` and `top_logprobs`) are the token strings an endpoint
    returned, kept so that a student with another tokenizer can spell them; bytes that are not UTF-8 are
    surrogate escapes (`s.encode("utf-8", "surrogateescape")` gives them back). They are None where the ids
    are the teacher's own (an in-process teacher). Where an endpoint named a top-k candidate only by its string
    and no tokenizer gives its id, that id is `UNKNOWN_ID`.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    prompt_tokens: int
    top_logprobs: list[list[tuple[int, float]]] | None = None
    tokens: list[str] | None = None
    top_tokens: list[list[str]] | None = None

    @property
    def completion_tokens(self) -> int:
        """Tokens generated for this completion."""
        return len(self.token_ids)

    def to_dict(self) -> dict:
        """A JSON-ready dict (top-k pairs become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Completion":
        """Inverse of `to_dict`."""
        top = data.get("top_logprobs")
        return cls(
            text=data["text"],
            token_ids=list(data["token_ids"]),
            logprobs=list(data["logprobs"]),
            finish_reason=data["finish_reason"],
            prompt_tokens=data["prompt_tokens"],
            top_logprobs=None if top is None else [[(int(t), float(lp)) for t, lp in pos] for pos in top],
            tokens=data.get("tokens"),
            top_tokens=data.get("top_tokens"),
        )


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: the OpenAI parameters that every backend understands."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {**asdict(self), "stop": list(self.stop)}


@dataclass
class ScoredText:
    """Log-probabilities a model gives to a fixed continuation of a prompt (teacher forcing)."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] | None = field(default=None)
