"""How far one account's prompts are from benign traffic: the unbiased MMD² with an RBF kernel between the
account's embedded prompts and a benign reference window (Gretton et al., JMLR 2012, eq. 3), with a permutation
p-value. The kernel width is the median pairwise distance of the reference (the usual heuristic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stillwatch.detect.signals import ramp, scores


@dataclass(frozen=True)
class MMDConfig:
    """Sample sizes, permutations and the MMD² that reads as fully different."""

    max_samples: int = 64  # of the account (newest)
    max_reference: int = 128
    permutations: int = 40
    alpha: float = 0.05  # at least 1 / (permutations + 1), the smallest p a permutation test gives
    full_mmd2: float = 0.2
    min_samples: int = 20
    seed: int = 0


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aa, bb = (a * a).sum(1)[:, None], (b * b).sum(1)[None, :]
    return np.maximum(aa + bb - 2.0 * a @ b.T, 0.0)


def mmd2_unbiased(k: np.ndarray, m: int) -> float:
    """Unbiased MMD² from a joint kernel matrix whose first `m` rows are X and the rest Y."""
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    n = k.shape[0] - m
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mmd(x: np.ndarray, reference: np.ndarray, config: MMDConfig = MMDConfig()) -> dict[str, Any]:
    """MMD² of X (account) against Y (benign reference), its permutation p-value and the score."""
    x, y = x[-config.max_samples:], reference[-config.max_reference:]
    if len(x) < config.min_samples or len(y) < config.min_samples:
        return scores("mmd", 0.0, 1.0, f"{len(x)} samples against {len(y)} reference: too few",
                      num_samples=len(x), num_reference=len(y), mmd2=None)
    z = np.concatenate([x, y]).astype(np.float64)
    d2 = _sq_dists(z, z)
    ref = d2[len(x):, len(x):]
    width2 = float(np.median(ref[np.triu_indices(len(y), 1)])) or 1.0
    k = np.exp(-d2 / width2)
    stat = mmd2_unbiased(k, len(x))
    rng = np.random.default_rng(config.seed)
    beats = 0
    for _ in range(config.permutations):
        perm = rng.permutation(len(z))
        beats += mmd2_unbiased(k[np.ix_(perm, perm)], len(x)) >= stat
    p = (beats + 1) / (config.permutations + 1)
    score = ramp(stat, 0, config.full_mmd2) if p <= config.alpha else 0.0
    return scores("mmd", score, 0.5, flagged=p <= config.alpha,
                  explanation=f"MMD² {stat:.3f} against {len(y)} benign prompts (p={p:.3f})",
                  num_samples=len(x), num_reference=len(y), mmd2=round(stat, 5), p_value=round(p, 5),
                  kernel_width2=round(width2, 5))
