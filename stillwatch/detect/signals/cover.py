"""A harvest hidden among benign prompts: the account's task sub-stream judged on its own, when chat runs through it.

Coverage needs hundreds of distinct task prompts before it weighs fully, because a pure task stream of a hundred
uniform prompts is what an eval runner sends: one fixed set, once, as a program, with nothing else between its
items. A harvester who hides mixes chat into the stream so that the account looks like a person. The mix is the
tell: chat and a uniform task stream interleaved prompt by prompt are one client switching between cover and job,
where a program is one or the other and a person who runs a set between chats sends it as a batch (which switches
twice). A person can also ask a sum now and then between chats, as a student doing homework does; that is a few
dozen task prompts, and a harvest worth having is hundreds. So the task sub-stream (prompts that name a built-in
task or carry numbers: coverage's domain) is judged with a bound sized for a stream that brings its own cover,
above a person's volume, and only as far as
  * the rest of the account's traffic is chat (`chat_share`: its share of the prompts), and
  * the task prompts are spread through that chat (`interleave`: switches between task and chat over the most the
    two counts allow; strict alternation is 1, a random shuffle max(p, 1 - p), one batch about 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from stillwatch.detect.events import Event
from stillwatch.detect.signals import ramp, scores
from stillwatch.detect.signals.coverage import CoverageConfig, CoverageCounts, coverage_counts, task_of


@dataclass(frozen=True)
class CoverConfig:
    """How much of a covered task stream it takes to be fully suspicious."""

    # Distinct task prompts for full weight once chat covers them (coverage's own: 400). At 40, a person doing a
    # few dozen sums between chats read as a hidden harvest; harvests of 150 carry little of the teacher.
    full_distinct: int = 150
    # Digits for the uniformity test: five a bin is chi-square's own rule, and enough to reject an app's round
    # amounts (a third of their digits are 0); coverage waits for 100 because it has no other evidence.
    min_digits: int = 50
    min_task: int = 20  # fewer task prompts in the window than this: no judgement
    chat_low: float = 0.15  # a chat share at or below this is no cover (an integration's stray messages)...
    chat_full: float = 0.35  # ...and at or above this, a full one
    interleave_low: float = 0.2  # switches over their most at or below this: task prompts sent in batches...
    interleave_full: float = 0.45  # ...and at or above this, spread through the chat


def is_task(prompt: str) -> bool:
    """A prompt of the task sub-stream: it names a built-in task or carries a number (what coverage counts)."""
    return task_of(prompt) is not None or any(c.isdigit() for c in prompt[:500])


def cover(events: Sequence[Event], counts: CoverageCounts, config: CoverConfig = CoverConfig(),
          coverage_config: CoverageConfig = CoverageConfig()) -> dict[str, Any]:
    """Coverage of the task sub-stream (bound `full_distinct`) × how much chat covers it × how finely it is mixed in."""
    labels = [is_task(e.prompt) for e in events if e.prompt]
    n_task = sum(labels)
    n_chat = len(labels) - n_task
    if n_task < config.min_task or n_chat == 0:
        return scores("cover", 0.0, 0.5, f"{n_task} task prompts, {n_chat} chat: no covered task stream",
                      num_task=n_task, num_chat=n_chat, chat_share=round(n_chat / max(1, len(labels)), 4),
                      interleave=0.0, harvest=0.0)
    switches = sum(a != b for a, b in zip(labels, labels[1:]))
    interleave = min(1.0, switches / (2 * min(n_task, n_chat)))
    chat_share = n_chat / len(labels)
    harvest = coverage_counts(counts, replace(coverage_config, full_distinct=config.full_distinct,
                                                      min_digits=config.min_digits))
    score = (harvest["score"] * ramp(chat_share, config.chat_low, config.chat_full)
             * ramp(interleave, config.interleave_low, config.interleave_full))
    return scores("cover", score, 0.5,
                  f"{n_task} task prompts among {n_chat} chat ({chat_share:.0%} chat, interleave {interleave:.2f}); "
                  f"task stream: {harvest['explanation']}",
                  num_task=n_task, num_chat=n_chat, num_switches=switches, chat_share=round(chat_share, 4),
                  interleave=round(interleave, 4), harvest=harvest["score"], num_distinct=harvest["num_distinct"])
