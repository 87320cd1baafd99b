"""Systematic coverage of a task space: a harvester samples the task's grammar uniformly (every digit equally
often, every task touched, nothing asked twice); real traffic is skewed (round amounts, repeats, a few topics).
Uniformity is a chi-square goodness-of-fit test of the digits in the prompts' numbers."""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

from stillwatch.detect.events import Event
from stillwatch.detect.signals import ramp, scores
from stillwatch.tasks import TASK_NAMES

_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class CoverageConfig:
    """How much uniform coverage it takes to be fully suspicious."""

    full_distinct: int = 400  # distinct numeric prompts for full weight
    min_digits: int = 100  # fewer digits than this: no test
    uniform_p: float = 0.05  # a p-value at or above this reads as uniform
    skewed_p: float = 1e-4  # and at or below this as skewed
    uniform_tvd: float = 0.06  # total variation from uniform at or below this reads as uniform...
    skewed_tvd: float = 0.15  # ...and at or above this as skewed
    tvd_min_digits: int = 500  # where sampling noise in the TVD is below uniform_tvd


def task_of(prompt: str) -> str | None:
    """The built-in task a prompt is written for, from its `name:` prefix."""
    name = prompt.split(":", 1)[0].strip()
    return name if name in TASK_NAMES else None


def digit_histograms(prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Counts of the non-leading digits of multi-digit numbers (0-9), and of one-digit numbers (1-9)."""
    multi, single = np.zeros(10, dtype=np.int64), np.zeros(9, dtype=np.int64)
    for prompt in prompts:
        for num in _NUMBER.findall(prompt[:500]):
            if len(num) == 1:
                if num != "0":
                    single[int(num) - 1] += 1
            elif len(num) <= 12:  # longer runs are ids or noise, not operands
                for ch in num[1:]:
                    multi[int(ch)] += 1
    return multi, single


def _tvd(counts: np.ndarray) -> float:
    return float(0.5 * np.abs(counts / counts.sum() - 1.0 / len(counts)).sum())


def _uniform_p(counts: np.ndarray, min_count: int) -> float | None:
    if counts.sum() < min_count:
        return None
    return float(stats.chisquare(counts).pvalue)


class DistinctSketch:
    """K-minimum-values distinct counter (Bar-Yossef et al., RANDOM 2002): exact below k, bounded memory above."""

    def __init__(self, k: int = 256) -> None:
        self.k = k
        self.values: list[int] = []  # the k smallest 64-bit hashes, sorted

    def add(self, text: str) -> None:
        """Count `text` once, however often it comes."""
        h = int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "little")
        if len(self.values) == self.k and h >= self.values[-1]:
            return
        i = bisect.bisect_left(self.values, h)
        if i < len(self.values) and self.values[i] == h:
            return
        self.values.insert(i, h)
        del self.values[self.k:]

    def merge(self, other: DistinctSketch) -> DistinctSketch:
        """The sketch of the union of both streams."""
        out = DistinctSketch(min(self.k, other.k))
        out.values = sorted(set(self.values) | set(other.values))[:out.k]
        return out

    def estimate(self) -> float:
        """The estimated number of distinct texts."""
        if len(self.values) < self.k:
            return float(len(self.values))
        return (self.k - 1) / (self.values[-1] / 2.0**64)


@dataclass
class CoverageCounts:
    """What coverage needs, kept incrementally: digit histograms, a distinct sketch, numeric prompts and tasks."""

    multi: np.ndarray = field(default_factory=lambda: np.zeros(10, dtype=np.int64))
    single: np.ndarray = field(default_factory=lambda: np.zeros(9, dtype=np.int64))
    distinct: DistinctSketch = field(default_factory=DistinctSketch)
    prompts: int = 0
    tasks: set = field(default_factory=set)

    def add(self, prompt: str) -> None:
        """Count one prompt."""
        task = task_of(prompt)
        if task:
            self.tasks.add(task)
        if not any(c.isdigit() for c in prompt[:500]):
            return
        multi, single = digit_histograms([prompt])
        self.multi += multi
        self.single += single
        self.distinct.add(prompt)
        self.prompts += 1

    def merge(self, other: CoverageCounts) -> CoverageCounts:
        """The counts of both streams together (a campaign's union)."""
        return CoverageCounts(self.multi + other.multi, self.single + other.single,
                              self.distinct.merge(other.distinct), self.prompts + other.prompts,
                              self.tasks | other.tasks)


def coverage(events: Sequence[Event], config: CoverageConfig = CoverageConfig()) -> dict[str, Any]:
    """Coverage of a list of events (see `coverage_counts`)."""
    counts = CoverageCounts()
    for e in events:
        if e.prompt:
            counts.add(e.prompt)
    return coverage_counts(counts, config)


def coverage_counts(counts: CoverageCounts, config: CoverageConfig = CoverageConfig()) -> dict[str, Any]:
    """Uniformity (chi-square p of the digits), how many distinct numeric prompts back it, and task breadth."""
    multi, single, tasks = counts.multi, counts.single, counts.tasks
    distinct = int(round(counts.distinct.estimate()))
    n_prompts = counts.prompts
    ps = [p for p in (_uniform_p(multi, config.min_digits), _uniform_p(single, config.min_digits)) if p is not None]
    if not ps:
        return scores("coverage", 0.0, 0.5, f"{int(multi.sum() + single.sum())} digits: too few to judge",
                      num_prompts=n_prompts, num_distinct=distinct, num_tasks=len(tasks), p_uniform=None)
    p = min(1.0, min(ps) * len(ps))  # Bonferroni over the two tests
    # Linear in log p between the skewed and uniform ends.
    uniform = ramp(math.log10(max(p, 1e-300)), math.log10(config.skewed_p), math.log10(config.uniform_p))
    # With many digits the test rejects any speck of other traffic; the effect size (total variation from
    # uniform) still tells a harvest with some chat mixed in from an app's round amounts.
    tvd = max(_tvd(h) for h in (multi, single) if h.sum() >= config.min_digits)
    if multi.sum() + single.sum() >= config.tvd_min_digits:
        uniform = max(uniform, ramp(tvd, config.skewed_tvd, config.uniform_tvd))
    distinct_ratio = min(1.0, distinct / max(1, n_prompts))
    # Repeats are what real traffic has and a harvest avoids; a few (chat that mentions a number) do not matter.
    extent = ramp(distinct, 0, config.full_distinct) * ramp(distinct_ratio, 0.2, 0.6)
    return scores("coverage", uniform * extent, 0.5,
                  f"digits uniform p={p:.2g} (TVD {tvd:.3f}) over {distinct} distinct numeric prompts "
                  f"({distinct_ratio:.0%} unique), {len(tasks)} built-in tasks",
                  num_prompts=n_prompts, num_distinct=distinct, num_tasks=len(tasks),
                  num_digits=int(multi.sum() + single.sum()), p_uniform=p, tvd=round(tvd, 4), distinct_ratio=round(distinct_ratio, 4))
