"""Detection signals: each module is a pure function over one account's (or one cluster's) recent events that
returns a dict of named scores, in the shape of lm-watermarking's detector: num_* counts, the statistic,
`score` in [0, 1], `threshold`, `flagged` and a one-line `explanation`."""

from __future__ import annotations

from typing import Any


def scores(name: str, score: float, threshold: float, explanation: str, flagged: bool | None = None,
           **values: Any) -> dict[str, Any]:
    """The common shape of every signal's result (score clipped to [0, 1]; flagged defaults to score >= threshold)."""
    score = float(min(1.0, max(0.0, score)))
    out: dict[str, Any] = {"signal": name, **values, "score": round(score, 4), "threshold": threshold}
    out["flagged"] = bool(score >= threshold) if flagged is None else bool(flagged)
    out["explanation"] = explanation
    return out


def ramp(value: float, low: float, high: float) -> float:
    """0 at or below `low`, 1 at or above `high`, linear between (`low` > `high` ramps downwards)."""
    if high == low:
        return float(value >= high)
    return float(min(1.0, max(0.0, (value - low) / (high - low))))
