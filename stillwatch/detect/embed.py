"""Cheap prompt embeddings: hashed character n-grams, L2-normalised (no model, microseconds per prompt)."""

from __future__ import annotations

import hashlib
import re

import numpy as np

DIM = 256
_DIGITS = re.compile(r"\d")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, digits as 0, runs of white space as one space: the shape of a prompt, not its values."""
    return _SPACE.sub(" ", _DIGITS.sub("0", text.lower())).strip()


def _bucket(gram: str, dim: int) -> int:
    # blake2b, not hash(): Python salts str hashes per process, and verdicts must not change between runs.
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8", "replace"), digest_size=4).digest(), "little") % dim


def embed(text: str, n: int = 3, dim: int = DIM, keep_digits: bool = True) -> np.ndarray:
    """A unit vector of hashed character `n`-gram counts (zeros for an empty text)."""
    text = _SPACE.sub(" ", text.lower()).strip() if keep_digits else normalise(text)
    vec = np.zeros(dim, dtype=np.float32)
    padded = f" {text} "
    for i in range(max(0, len(padded) - n + 1)):
        vec[_bucket(padded[i:i + n], dim)] += 1.0
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


def embed_many(texts: list[str], n: int = 3, dim: int = DIM, keep_digits: bool = True) -> np.ndarray:
    """Rows of `embed` for each text, shape (len(texts), dim)."""
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([embed(t, n, dim, keep_digits) for t in texts])
