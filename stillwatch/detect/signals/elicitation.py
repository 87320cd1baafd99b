"""Reasoning elicitation, system-prompt extraction and injection: the share of an account's prompts that the
elicitation classifier (stillwatch.detect.elicit) flags. One flagged prompt is curiosity; a steady share is a job."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from stillwatch.detect.signals import ramp, scores


@dataclass(frozen=True)
class ElicitationConfig:
    """How many flagged prompts, and what share, make the signal full."""

    full_share: float = 0.3
    full_count: int = 20


def classifier_scorer() -> Callable[[str], dict]:
    """The packaged classifier's per-prompt scorer (imported here, so signals that do not need it stay light)."""
    from stillwatch.detect.elicit import score_prompt

    return score_prompt


def elicitation(results: Sequence[dict], config: ElicitationConfig = ElicitationConfig()) -> dict[str, Any]:
    """Over per-prompt classifier results (`score`, `flagged`, `category`): the flagged share and count."""
    n = len(results)
    flagged = [r for r in results if r.get("flagged")]
    share = len(flagged) / n if n else 0.0
    cats = Counter(r.get("category") for r in flagged)
    score = ramp(share, 0, config.full_share) * ramp(len(flagged), 0, config.full_count)
    top = cats.most_common(1)[0][0] if cats else None
    return scores("elicitation", score, 0.5, f"{len(flagged)} of {n} prompts flagged"
                  + (f", mostly {top}" if top else ""), num_prompts=n, num_flagged=len(flagged),
                  flagged_share=round(share, 4), categories=dict(cats))
