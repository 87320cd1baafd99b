"""The Teacher protocol that LocalTeacher and OpenAITeacher both implement."""

from __future__ import annotations

from typing import Protocol, Sequence

from stillwatch.teachers.completion import Completion, SamplingParams, ScoredText


class Teacher(Protocol):
    """A model that completes prompts and scores given text, in process or behind an API."""

    name: str

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        """`params.n` completions for each prompt, in prompt order."""
        ...

    async def score(self, prompt: str, continuation_ids: Sequence[int], top_k: int = 0) -> ScoredText:
        """Log-probabilities of `continuation_ids` after `prompt`, by teacher forcing."""
        ...

    async def aclose(self) -> None:
        """Release connections or memory."""
        ...
