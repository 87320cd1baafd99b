"""Hashed features for the elicitation model: character and word n-grams plus rule hits, all in numpy."""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from stillwatch.detect.elicit_concepts import concept_features

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_PRIME = np.uint64(1_000_003)


@dataclass(frozen=True)
class FeatureConfig:
    """How a text becomes a sparse vector; saved beside the weights so a model always reads its own features."""

    dim_bits: int = 18
    char_min: int = 2
    char_max: int = 5
    word_ngrams: int = 2
    use_chars: bool = True
    use_words: bool = True
    use_rules: bool = True
    use_concepts: bool = True
    concept_window: int = 6
    # at scoring time, also score up to this many lines/sentences/strings alone and keep each category's max
    segments: int = 24

    @property
    def dim(self) -> int:
        """Number of hashed buckets."""
        return 1 << self.dim_bits

    def to_dict(self) -> dict:
        """Plain fields, for the model file."""
        return asdict(self)


def _finalise(h: np.ndarray, salt: int, mask: int) -> np.ndarray:
    # A multiply-xorshift mix so nearby polynomial hashes land in unrelated buckets.
    h = (h + np.uint64(salt)) * _MIX
    h ^= h >> np.uint64(29)
    h *= _MIX
    h ^= h >> np.uint64(32)
    return (h & np.uint64(mask)).astype(np.int64)


def _char_buckets(text: str, cfg: FeatureConfig) -> list[np.ndarray]:
    codes = np.frombuffer(f" {text} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    out = []
    with np.errstate(over="ignore"):  # uint64 wrap-around is the hash
        h = np.zeros(0, dtype=np.uint64)
        for n in range(1, cfg.char_max + 1):
            if len(codes) < n:
                break
            h = codes[n - 1:] if n == 1 else h[: len(codes) - n + 1] * _PRIME + codes[n - 1:]
            if n >= cfg.char_min:
                out.append(_finalise(h, n, cfg.dim - 1))
    return out


def _word_buckets(text: str, cfg: FeatureConfig) -> list[np.ndarray]:
    words = _WORD.findall(text)
    if not words:
        return []
    base = np.fromiter((zlib.crc32(w.encode("utf-8", "replace")) for w in words), dtype=np.uint64, count=len(words))
    out = [_finalise(base, 101, cfg.dim - 1)]
    with np.errstate(over="ignore"):
        h = base
        for n in range(2, cfg.word_ngrams + 1):
            if len(base) < n:
                break
            h = h[:-1] * _PRIME + base[n - 1:]
            out.append(_finalise(h, 100 + n, cfg.dim - 1))
    return out


def _named_buckets(names: list[str], salt: int, cfg: FeatureConfig) -> np.ndarray:
    h = np.fromiter((zlib.crc32(n.encode()) for n in names), dtype=np.uint64, count=len(names))
    return _finalise(h, salt, cfg.dim - 1)


def featurise(text: str, rule_names: list[str], cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sparse (indices, values): n-gram and concept counts, log-scaled and each block L2-normalised, then each
    rule hit at 1."""
    parts = []
    if cfg.use_chars:
        parts += _char_buckets(text, cfg)
    if cfg.use_words:
        parts += _word_buckets(text, cfg)
    if parts:
        idx, counts = np.unique(np.concatenate(parts), return_counts=True)
        values = np.log1p(counts.astype(np.float32))
        values /= np.float32(np.linalg.norm(values)) or np.float32(1.0)
    else:
        idx, values = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if cfg.use_concepts:
        names = concept_features(text, cfg.concept_window)
        if names:
            cidx, ccounts = np.unique(_named_buckets(names, 313, cfg), return_counts=True)
            cval = np.log1p(ccounts.astype(np.float32))
            cval /= np.float32(np.linalg.norm(cval))
            idx, values = np.concatenate([idx, cidx]), np.concatenate([values, cval])
    if cfg.use_rules and rule_names:
        idx = np.concatenate([idx, _named_buckets(rule_names, 997, cfg)])
        values = np.concatenate([values, np.ones(len(rule_names), dtype=np.float32)])
    return idx, values
