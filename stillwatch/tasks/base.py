"""The Task protocol: deterministic prompts, reference traces and answers, and a scorer that never raises."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

ANSWER_MARK = "->"
# Completions longer than this are malformed by definition; capping keeps scoring O(1) on hostile input.
MAX_SCORED_CHARS = 4096

TaskKind = Literal["reasoning", "open"]


@dataclass(frozen=True)
class Example:
    """One task instance: the prompt, the reference completion (trace then answer) and the bare answer."""

    task: str
    prompt: str
    trace: str
    answer: str

    @property
    def answer_only(self) -> str:
        """The completion without its reasoning trace, for answers-only baselines."""
        return f"{ANSWER_MARK} {self.answer}" if self.answer else self.trace


class Task(Protocol):
    """A built-in task: it generates examples from a seed and scores any completion string."""

    name: str
    kind: TaskKind

    def example(self, rng: random.Random) -> Example:
        """Draw one example from `rng`."""
        ...

    def score(self, prompt: str, completion: str) -> bool:
        """True when the completion is correct (reasoning) or valid (open); never raises."""
        ...


def examples(task: Task, n: int, seed: int) -> list[Example]:
    """`n` examples of `task`, the same for the same seed."""
    rng = random.Random(f"{task.name}:{seed}")
    return [task.example(rng) for _ in range(n)]


def extract_answer(completion: str) -> str | None:
    """The text after the last answer mark, stripped; None when there is no mark."""
    if not isinstance(completion, str) or len(completion) > MAX_SCORED_CHARS:
        return None
    head, mark, tail = completion.rpartition(ANSWER_MARK)
    if not mark:
        return None
    return tail.strip()
