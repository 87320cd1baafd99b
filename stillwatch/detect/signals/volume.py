"""Volume and rate: how much one account asks for, and how fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from stillwatch.detect.events import Event
from stillwatch.detect.signals import ramp, scores


@dataclass(frozen=True)
class VolumeConfig:
    """Rates at which volume alone is fully suspicious (it is weak evidence: honest apps are heavy too)."""

    requests: int = 5000  # requests seen in total
    tokens: int = 500_000  # tokens served in total
    per_minute: float = 240.0  # sustained requests per minute over the window
    min_span_s: float = 60.0  # a window shorter than this is measured as this long: bursts are not rates


def volume(events: Sequence[Event], total_requests: int | None = None, total_tokens: int | None = None,
           config: VolumeConfig = VolumeConfig()) -> dict[str, Any]:
    """Requests, tokens and the sustained rate of the window; the score is the largest of the three ratios."""
    n = len(events)
    total_requests = n if total_requests is None else total_requests
    total_tokens = sum(e.tokens for e in events) if total_tokens is None else total_tokens
    span = (max(e.time for e in events) - min(e.time for e in events)) if n > 1 else 0.0
    rate = n / max(span, config.min_span_s) * 60.0
    parts = {"requests": ramp(total_requests, 0, config.requests), "tokens": ramp(total_tokens, 0, config.tokens),
             "rate": ramp(rate, 0, config.per_minute)}
    top = max(parts, key=parts.get)
    return scores("volume", parts[top], 1.0, f"{total_requests} requests, {total_tokens} tokens, "
                  f"{rate:.0f}/min; largest: {top}", num_requests=total_requests, num_tokens=total_tokens,
                  requests_per_minute=round(rate, 2))
