"""The Teacher protocol that LocalTeacher and OpenAITeacher both implement."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Protocol, Sequence, TypeVar

from stillwatch.teachers.completion import Completion, SamplingParams, ScoredText


T = TypeVar("T")


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


def run_on_own_loop(teacher: Teacher, work: Awaitable[T]) -> T:
    """Run `work` on a fresh event loop and release the teacher's connections before that loop closes.

    An HTTP client's pool belongs to the loop that opened it; left open, it is collected during a later loop,
    whose attempt to close it fails with "Event loop is closed". The next loop opens new connections.
    """
    async def main() -> T:
        try:
            return await work
        finally:
            await teacher.aclose()

    return asyncio.run(main())
