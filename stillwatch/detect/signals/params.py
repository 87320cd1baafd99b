"""Sampling-parameter fingerprints of harvesting: top-k logprobs (what white-box distillation needs), n > 1
(diversity), one fixed seed over many prompts, and temperature sweeps, each weighted by how many distinct
prompts it was applied to (a researcher sweeping 20 prompts extracts little)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

from stillwatch.detect.events import Event
from stillwatch.detect.signals import ramp, scores


@dataclass(frozen=True)
class ParamsConfig:
    """How much of each fingerprint it takes to be fully suspicious."""

    full_top_logprobs: int = 5
    full_n: int = 4
    full_prompts: int = 300  # distinct prompts carrying a fingerprint, for full weight
    sweep_temperatures: int = 3  # one prompt at this many temperatures is a sweep


def fingerprint(event: Event) -> tuple:
    """The parameters that identify a client's settings: temperature, top_p, top-k, n, max_tokens, seed set."""
    t = None if event.temperature is None else round(event.temperature, 2)
    return (t, event.top_p, event.top_logprobs if event.logprobs else -1, event.n, event.max_tokens,
            event.seed is not None)


def params(events: Sequence[Event], config: ParamsConfig = ParamsConfig()) -> dict[str, Any]:
    """Logprob, n, seed and sweep components (each in [0, 1]); the score is their noisy-OR."""
    if not events:
        return scores("params", 0.0, 0.5, "no requests", num_requests=0)
    topk = {e.prompt for e in events if e.logprobs and e.top_logprobs > 0}
    mean_top = sum(e.top_logprobs for e in events if e.logprobs) / max(1, sum(e.logprobs for e in events))
    multi_events = [e for e in events if e.n > 1]
    multi = {e.prompt for e in multi_events}
    mean_n = sum(e.n for e in multi_events) / len(multi_events) if multi_events else 1.0
    seeds: dict[int, set] = defaultdict(set)
    temps: dict[str, set] = defaultdict(set)
    for e in events:
        if e.seed is not None:
            seeds[e.seed].add(e.prompt)
        temps[e.prompt].add(None if e.temperature is None else round(e.temperature, 2))
    seeded = max((len(p) for p in seeds.values()), default=0)  # distinct prompts under the most used seed
    swept = sum(1 for t in temps.values() if len(t) >= config.sweep_temperatures)
    full = config.full_prompts
    parts = {
        "top_logprobs": ramp(mean_top, 0, config.full_top_logprobs) * ramp(len(topk), 0, full),
        # n > 1 is judged by the extra samples it brought: an open task has few prompts but endless answers.
        # Full weight at `full_prompts` extra samples: no honest profile asks for more than one answer that often.
        "n": ramp(mean_n, 1, config.full_n) * ramp(sum(e.n - 1 for e in multi_events), 0, full),
        "fixed_seed": ramp(seeded, 0, full) * 0.5,  # weak: reproducibility is a fine reason too
        "temperature_sweep": ramp(swept, 0, full),
    }
    rest = 1.0
    for v in parts.values():
        rest *= 1.0 - v
    top = max(parts, key=parts.get)
    return scores("params", 1.0 - rest, 0.5,
                  f"top-k logprobs on {len(topk)} prompts (mean k {mean_top:.1f}), n>1 on {len(multi)}, "
                  f"{seeded} prompts under one seed, {swept} swept; largest: {top}",
                  num_requests=len(events), num_topk_prompts=len(topk), mean_top_logprobs=round(mean_top, 2),
                  num_n_prompts=len(multi), num_seeded_prompts=seeded, num_swept_prompts=swept,
                  components={k: round(v, 4) for k, v in parts.items()})
