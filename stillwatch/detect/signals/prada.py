"""PRADA-style distance statistics (Juuti et al., EuroS&P 2019, Alg. 1): the minimum distance of each query to
the account's earlier queries; natural queries give roughly normal distances, synthetic ones do not, so a
Shapiro-Wilk W below δ flags the account."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from stillwatch.detect.signals import ramp, scores


@dataclass(frozen=True)
class PradaConfig:
    """δ and the sizes that bound memory per account."""

    delta: float = 0.90  # the paper tunes δ per model; 0.9 holds for our prompt embeddings (bench/detection.py)
    min_samples: int = 30
    max_growing_set: int = 256  # earlier queries kept (the paper keeps all; we keep the newest)
    max_distances: int = 512


def prada(distances: Sequence[float], config: PradaConfig = PradaConfig()) -> dict[str, Any]:
    """Shapiro-Wilk W of the minimum distances; score 1 at W <= δ, falling to 0 at W = 1."""
    d = np.asarray(distances, dtype=np.float64)
    if len(d) < config.min_samples:
        return scores("prada", 0.0, 1.0, f"{len(d)} distances: too few to judge", num_distances=len(d), w=None)
    if float(d.std()) < 1e-9:  # every distance equal: as far from normal as it gets
        w, p = 0.0, 0.0
    else:
        w, p = (float(x) for x in stats.shapiro(d))
    return scores("prada", ramp(w, 1.0, config.delta), 1.0,
                  f"Shapiro-Wilk W {w:.3f} of {len(d)} min distances (δ {config.delta})",
                  num_distances=len(d), w=round(w, 4), p_value=p, mean_distance=round(float(d.mean()), 4))


class PradaTracker:
    """One account's growing set G (a ring buffer of embeddings) and distance list D, both bounded."""

    def __init__(self, config: PradaConfig | None = None) -> None:
        self.config = config or PradaConfig()
        self._g: np.ndarray | None = None
        self._size = 0  # vectors in G
        self._next = 0  # the slot the next one overwrites once G is full
        self.distances: deque = deque(maxlen=self.config.max_distances)

    def update(self, vec: np.ndarray) -> float | None:
        """Add a query's embedding; returns its minimum distance to G (None for the first query)."""
        if self._g is None:
            # Start small and double up to the bound: most accounts send a handful of requests.
            self._g = np.zeros((min(8, self.config.max_growing_set), len(vec)), dtype=np.float32)
        if self._size == 0:
            self._add(vec)
            return None
        g = self._g[:self._size]
        d_min = float(np.sqrt(max(0.0, float(np.min(((g - vec) ** 2).sum(axis=1))))))
        self.distances.append(d_min)
        # Alg. 1: a query joins G only when it is not much closer than usual, so that G stays spread out.
        ds = np.fromiter(self.distances, dtype=np.float64)
        if d_min > ds.mean() - ds.std():
            self._add(vec)
        return d_min

    def _add(self, vec: np.ndarray) -> None:
        assert self._g is not None
        if self._size == len(self._g) < self.config.max_growing_set:
            grown = np.zeros((min(2 * len(self._g), self.config.max_growing_set), self._g.shape[1]), np.float32)
            grown[:self._size] = self._g
            self._g, self._next = grown, self._size
        self._g[self._next] = vec
        self._next = (self._next + 1) % len(self._g)
        self._size = min(self._size + 1, len(self._g))

    def result(self) -> dict[str, Any]:
        """The PRADA scores for what this tracker has seen."""
        return prada(list(self.distances), self.config)
