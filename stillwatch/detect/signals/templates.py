"""Templates and near-duplicates: the share of prompts that are one template with the values swapped (digits
as 0), and, for paraphrased templates, the share of prompt pairs whose shingled MinHash Jaccard is high
(Broder 1997)."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from stillwatch.detect.embed import normalise
from stillwatch.detect.events import Event
from stillwatch.detect.signals import ramp, scores

_PRIME = (1 << 61) - 1


@dataclass(frozen=True)
class TemplateConfig:
    """MinHash size and thresholds."""

    num_perm: int = 32
    shingle: int = 5  # characters
    near_jaccard: float = 0.5
    max_pairs_prompts: int = 64  # near-duplicates are judged on this many of the newest prompts
    min_requests: int = 30  # below this the share says little
    full_requests: int = 200


def _shingles(text: str, k: int) -> np.ndarray:
    grams = {text[i:i + k] for i in range(max(1, len(text) - k + 1))}
    return np.array([int.from_bytes(hashlib.blake2b(g.encode("utf-8", "replace"), digest_size=8).digest(),
                                    "little") % _PRIME for g in grams], dtype=np.uint64)


def minhash(texts: Sequence[str], num_perm: int = 32, shingle: int = 5, seed: int = 0) -> np.ndarray:
    """MinHash signatures (len(texts), num_perm) of each text's character shingles; fixed seed, same every run."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 31, num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, num_perm, dtype=np.uint64)
    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    for i, text in enumerate(texts):
        x = _shingles(text, shingle) % np.uint64(1 << 31)  # 31-bit values: a*x+b stays inside 64 bits
        out[i] = ((np.outer(x, a) + b) % np.uint64(_PRIME)).min(axis=0)
    return out


def templates(events: Sequence[Event], config: TemplateConfig = TemplateConfig()) -> dict[str, Any]:
    """Top template share and near-duplicate pair share, scaled by how many requests back them."""
    texts = [normalise(e.prompt) for e in events if e.prompt]
    n = len(texts)
    if n == 0:
        return scores("templates", 0.0, 0.8, "no prompt text", num_prompts=0, num_templates=0)
    counts = Counter(texts)
    top_share = counts.most_common(1)[0][1] / n
    recent = texts[-config.max_pairs_prompts:]
    near = 0.0
    if len(recent) >= 2:
        sig = minhash(recent, config.num_perm, config.shingle)
        jac = (sig[:, None, :] == sig[None, :, :]).mean(axis=2)
        iu = np.triu_indices(len(recent), 1)
        near = float((jac[iu] >= config.near_jaccard).mean())
    extent = ramp(n, config.min_requests, config.full_requests)
    score = max(top_share, near) * extent
    return scores("templates", score, 0.8, f"{len(counts)} templates over {n} prompts; top {top_share:.0%}, "
                  f"near-duplicate pairs {near:.0%}", num_prompts=n, num_templates=len(counts),
                  top_template_share=round(top_share, 4), near_duplicate_share=round(near, 4))
