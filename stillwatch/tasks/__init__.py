"""The built-in world: verifiable reasoning tasks and an open-ended grammar task."""

from __future__ import annotations

import dataclasses
from typing import Callable

from stillwatch.errors import ConfigError, UnknownTaskError
from stillwatch.tasks.arithmetic import Addition, ModularChain, Multiplication
from stillwatch.tasks.base import ANSWER_MARK, Example, Task, examples, extract_answer
from stillwatch.tasks.story import Story

_REGISTRY: dict[str, Callable[[], Task]] = {
    "add": Addition,
    "mul": Multiplication,
    "chain": ModularChain,
    "story": Story,
}
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)
REASONING_TASKS: tuple[str, ...] = ("add", "mul", "chain")


def get_task(name: str) -> Task:
    """The task called `name`, at its default difficulty or at the one a spec gives: `add:digits=6`,
    `chain:steps=8` (the task's own fields, comma-separated: `mul:digits=5`)."""
    base, _, spec = name.partition(":")
    try:
        factory = _REGISTRY[base]
    except KeyError:
        raise UnknownTaskError(f"unknown task {base!r}; choose from {', '.join(TASK_NAMES)}") from None
    if not spec:
        return factory()
    params: dict[str, int] = {}
    fields = {f.name for f in dataclasses.fields(factory)} - {"name", "kind"} if dataclasses.is_dataclass(factory) else set()
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in fields or not value.strip().lstrip("-").isdigit():
            shown = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"task {name!r}: difficulty is NAME:FIELD=INT (fields of {base}: {shown})")
        params[key] = int(value)
    return factory(**params)


def get_tasks(names: list[str] | tuple[str, ...] | None = None) -> list[Task]:
    """Tasks by name, or all of them."""
    return [get_task(n) for n in (names or TASK_NAMES)]


def task_for_prompt(prompt: str) -> Task | None:
    """The built-in task a prompt belongs to, from its `name:` prefix."""
    name = prompt.split(":", 1)[0]
    return get_task(name) if name in _REGISTRY else None


__all__ = ["ANSWER_MARK", "Example", "Task", "TASK_NAMES", "REASONING_TASKS", "examples", "extract_answer",
           "get_task", "get_tasks", "task_for_prompt", "Addition", "Multiplication", "ModularChain", "Story"]
