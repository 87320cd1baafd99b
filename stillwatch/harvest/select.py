"""Filtered and voted harvests: keep only the samples a verifier accepts, or the majority answer's traces.

DeepSeek-R1's distilled models were trained on teacher samples filtered by correctness (rejection sampling);
self-consistency (Wang et al. 2023) keeps the answer most samples agree on when nothing can check it. Either
way the student need not copy the teacher's mistakes, and can end above it.

* `--verify`: the built-in task scorers (the row's task, else the task its prompt names; a row with a
  reference `answer` and no built-in task is checked against that answer); `--verifier SPEC` names a user's
  callable instead, `module:function` or `path.py:function`, called as `fn(prompt, completion) -> bool`.
* `--vote` (with `--samples N`): the answer after the task's answer mark is each sample's vote; the samples
  whose answer has a strict majority of the prompt's votes (most votes, no tie) are kept.

Dropped samples are stored too, apart (`HarvestStore`'s `dropped` table), with a reason each; their tokens
count as teacher tokens consumed, and a resumed harvest does not ask for them again.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from stillwatch.errors import ConfigError
from stillwatch.tasks import extract_answer, get_task, task_for_prompt

Verifier = Callable[[str, str], bool]
BUILTIN = "builtin task scorers"


@dataclass(frozen=True)
class Drop:
    """Why a sample was not kept: `kind` for the counts (rejected, minority, tie, no_answer, unverifiable,
    verifier_error), `reason` for a person."""

    kind: str
    reason: str


def load_verifier(spec: str | None) -> tuple[Verifier | None, str]:
    """The user's callable named by `module:function` or `path.py:function` (None: the built-in scorers)."""
    if spec is None:
        return None, BUILTIN
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ConfigError(f"--verifier {spec!r}: give module:function or path/to/file.py:function")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ConfigError(f"--verifier: no file {path}")
            module_spec = importlib.util.spec_from_file_location(f"stillwatch_verifier_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:  # the user's code: any import failure is theirs to read, in one line
        raise ConfigError(f"--verifier {spec!r}: cannot import {where}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"--verifier {spec!r}: {where} has no callable {name!r}")
    try:
        inspect.signature(fn).bind("prompt", "completion")
    except (TypeError, ValueError):
        raise ConfigError(f"--verifier {spec!r}: {name} must take (prompt, completion)") from None
    return fn, spec


class Selector:
    """Decides, for one prompt's samples, which to keep; counts nothing itself (the store does)."""

    def __init__(self, verify: bool = False, verifier: str | None = None, vote: bool = False):
        self.verify = verify or verifier is not None
        self.vote = vote
        self._fn, self.verifier = load_verifier(verifier) if self.verify else (None, None)
        self._tasks: dict[str, Any] = {}

    def describe(self) -> dict:
        """What the store records of this selection."""
        return {"verify": self.verifier if self.verify else None, "vote": self.vote}

    def _check(self, item: Any, text: str) -> Drop | None:
        if self._fn is not None:
            try:
                ok = bool(self._fn(item.prompt, text))
            except Exception as exc:  # noqa: BLE001 - a verifier that fails on a sample rejects that sample
                return Drop("verifier_error", f"{self.verifier} raised {type(exc).__name__}: {str(exc)[:120]}")
            return None if ok else Drop("rejected", f"{self.verifier} returned False")
        task = self._task(item)
        if task is not None:
            if task.score(item.prompt, text):
                return None
            return Drop("rejected", f"{task.name}: answer {_shown(extract_answer(text))} is wrong")
        if item.answer is not None:
            got = extract_answer(text)
            return None if got == item.answer.strip() else Drop(
                "rejected", f"answer {_shown(got)} is not the reference {_shown(item.answer)}")
        return Drop("unverifiable", "no built-in task and no reference answer to check against")

    def _task(self, item: Any):
        name = item.task
        if name is not None:
            if name not in self._tasks:
                try:
                    self._tasks[name] = get_task(name)
                except Exception:  # noqa: BLE001 - a user's own task label
                    self._tasks[name] = None
            if self._tasks[name] is not None:
                return self._tasks[name]
        return task_for_prompt(item.prompt)

    def select(self, item: Any, texts: Sequence[str]) -> list[Drop | None]:
        """One decision per sample: None keeps it, a Drop says why not."""
        out: list[Drop | None] = [self._check(item, t) if self.verify else None for t in texts]
        if not self.vote:
            return out
        answers = [extract_answer(t) if d is None else None for t, d in zip(texts, out)]
        votes = Counter(a for a in answers if a is not None)
        ranked = votes.most_common(2)
        winner = ranked[0][0] if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]) else None
        for i, (d, a) in enumerate(zip(out, answers)):
            if d is not None:
                continue
            if a is None:
                out[i] = Drop("no_answer", "no answer mark to vote with")
            elif winner is None:
                out[i] = Drop("tie", f"no majority among {dict(votes)}")
            elif a != winner:
                out[i] = Drop("minority", f"answer {_shown(a)} lost to {_shown(winner)} "
                                          f"({votes[a]} of {sum(votes.values())} votes against {votes[winner]})")
        return out


def _shown(answer: str | None) -> str:
    if answer is None:
        return "(none)"
    return repr(answer if len(answer) <= 40 else answer[:37] + "...")


__all__ = ["BUILTIN", "Drop", "Selector", "load_verifier"]
