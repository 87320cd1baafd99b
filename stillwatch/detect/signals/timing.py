"""Timing regularity: scripts send at a steady pace, people and real apps in bursts (Poisson gaps have CV 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from stillwatch.detect.events import Event
from stillwatch.detect.signals import ramp, scores


@dataclass(frozen=True)
class TimingConfig:
    """Coefficient of variation of inter-arrival gaps: at or below `regular_cv` fully suspicious."""

    regular_cv: float = 0.25
    natural_cv: float = 0.7  # and nothing at or above this
    min_gaps: int = 20


def timing(events: Sequence[Event], config: TimingConfig = TimingConfig()) -> dict[str, Any]:
    """CV = std/mean of the gaps between successive requests of one account."""
    times = np.sort(np.array([e.time for e in events], dtype=np.float64))
    gaps = np.diff(times)
    if len(gaps) < config.min_gaps or float(gaps.mean()) <= 0:
        return scores("timing", 0.0, 1.0, f"{len(gaps)} gaps: too few to judge", num_gaps=len(gaps), cv=None)
    cv = float(gaps.std() / gaps.mean())
    return scores("timing", ramp(cv, config.natural_cv, config.regular_cv), 0.5,
                  f"inter-arrival CV {cv:.2f} over {len(gaps)} gaps (Poisson traffic ~1)", num_gaps=len(gaps),
                  cv=round(cv, 4), mean_gap_s=round(float(gaps.mean()), 4))
