"""Keyed green-list watermark (Kirchenbauer et al. 2023): the logits processor, the z-test detector and the key.

Generation and detection both run on `transformers`' `WatermarkLogitsProcessor`, so the green lists (and, for the
configurations transformers supports, the z-scores) are exactly those of `transformers.WatermarkDetector`. What
it lacks we add in one subclass:

- a hashing key derived from a secret with HMAC-SHA256, never the public default key;
- for `lefthash` with `context_width > 1`, a keyed BLAKE2b hash of the whole window (transformers seeds
  `lefthash` from the last token only, whatever the width);
- a cache of green lists per window and a batched `__call__` (generation asks for the same windows often).

Use `len(tokenizer)` as `vocab_size` on both sides: the green lists are permutations of that many ids.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from scipy.stats import binom, norm
from transformers.generation.logits_process import WatermarkLogitsProcessor

from stillwatch.errors import ConfigError
from stillwatch.forensics.config import (KEY_ENV, TRANSFORMERS_DEFAULT_KEY, Seeding,  # noqa: F401 - re-exported
                                         WatermarkConfig)
from stillwatch.keyfiles import read_secret_file

def load_watermark_key(key_file: Path | str | None = None) -> str | None:
    """The watermark secret from `key_file` when given, else from the env STILLWATCH_WATERMARK_KEY, else None."""
    if key_file is not None:
        return read_secret_file(key_file, "watermark key")
    secret = os.environ.get(KEY_ENV, "").strip()
    return secret or None


class KeyedWatermarkProcessor(WatermarkLogitsProcessor):
    """transformers' green-list processor with a derived key, wide `lefthash` windows and a green-list cache."""

    def __init__(self, config: WatermarkConfig, vocab_size: int, device: str | torch.device = "cpu",
                 cache_size: int = 65536):
        super().__init__(vocab_size=vocab_size, device=device, greenlist_ratio=config.gamma, bias=config.delta,
                         hashing_key=config.hashing_key, seeding_scheme=config.seeding,
                         context_width=config.context_width)
        self.config = config
        self._window_key = config.window_key
        self._masks: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def set_seed(self, input_seq: torch.LongTensor) -> None:
        """Seed the green-list RNG: a keyed hash of the whole window for wide `lefthash`, else transformers'."""
        if self.seeding_scheme == "lefthash" and self.context_width > 1:
            window = input_seq[-self.context_width:].tolist()
            digest = hashlib.blake2b(b",".join(str(t).encode() for t in window), key=self._window_key,
                                     digest_size=8).digest()
            self.rng.manual_seed(int.from_bytes(digest, "big") & ((1 << 63) - 1))
        else:
            super().set_seed(input_seq)

    def green_mask(self, seed_seq: Sequence[int]) -> torch.Tensor:
        """Boolean mask over the vocabulary of the green list that `seed_seq` (its last tokens) selects."""
        key = tuple(int(t) for t in seed_seq[max(0, len(seed_seq) - self.context_width):])
        mask = self._masks.get(key)
        if mask is None:
            ids = super()._get_greenlist_ids(torch.tensor(key, dtype=torch.long))
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[ids] = True
            self._masks[key] = mask
            if len(self._masks) > self._cache_size:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(key)
        return mask

    def _get_greenlist_ids(self, input_seq: torch.LongTensor) -> torch.LongTensor:
        return self.green_mask(input_seq.tolist()).nonzero().squeeze(1).to(input_seq.device)

    def is_green(self, window: Sequence[int], token: int) -> bool:
        """Whether `token` is green after `window` (for selfhash the window excludes the token itself)."""
        seed_seq = list(window) + [int(token)] if self.seeding_scheme == "selfhash" else list(window)
        return 0 <= token < self.vocab_size and bool(self.green_mask(seed_seq)[token])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self.seeding_scheme != "lefthash" or input_ids.shape[-1] < self.context_width:
            return super().__call__(input_ids, scores)
        masks = torch.stack([self.green_mask(row) for row in input_ids[:, -self.context_width:].tolist()])
        out = scores.clone()
        width = min(self.vocab_size, scores.shape[-1])
        out[:, :width] += self.bias * masks[:, :width].to(out.device, out.dtype)
        return out


@lru_cache(maxsize=16)
def _processor(config: WatermarkConfig, vocab_size: int) -> KeyedWatermarkProcessor:
    return KeyedWatermarkProcessor(config, vocab_size)


def watermark_processor(config: WatermarkConfig, vocab_size: int) -> KeyedWatermarkProcessor:
    """A fresh logits processor that adds δ to the green list of each step (Kirchenbauer et al., Alg. 2/3)."""
    return KeyedWatermarkProcessor(config, vocab_size)


def green_oracle(config: WatermarkConfig, vocab_size: int) -> KeyedWatermarkProcessor:
    """A shared (cached) processor used only to ask which tokens are green: detection and radioactivity."""
    return _processor(config, vocab_size)


def z_score(num_green: int, num_scored: int, gamma: float) -> float:
    """z = (|s|_G − γT) / sqrt(T γ (1 − γ))  (Kirchenbauer et al., Eq. 3); 0 when nothing was scored."""
    if num_scored <= 0:
        return 0.0
    return (num_green - gamma * num_scored) / math.sqrt(num_scored * gamma * (1 - gamma))


def binomial_p_value(num_green: int, num_scored: int, gamma: float) -> float:
    """Exact one-sided p-value P[Binomial(T, γ) ≥ |s|_G]."""
    if num_scored <= 0:
        return 1.0
    return float(binom.sf(num_green - 1, num_scored, gamma))


def detect(token_ids: Sequence[int], config: WatermarkConfig, prompt_ids: Sequence[int] | None = None,
           ignore_repeated_ngrams: bool = True, threshold: float = 4.0, *, vocab_size: int) -> dict:
    """Score one text: green tokens among the completion's tokens, z-score and p-value (Kirchenbauer et al. §4).

    The prompt is never scored, but its last tokens seed the green lists of the first completion tokens, as they
    did at generation. With `ignore_repeated_ngrams`, each distinct (window, token) n-gram counts once, like
    `WatermarkDetector(ignore_repeated_ngrams=True)`. `p_value` is the normal tail of z (as lm-watermarking and
    transformers report it); `binomial_p_value` is exact and better calibrated for short texts.
    """
    oracle = green_oracle(config, vocab_size)
    prompt = [int(t) for t in (prompt_ids or [])]
    seq = prompt + [int(t) for t in token_ids]
    first = max(len(prompt), config.window)
    seen: set[tuple[int, ...]] = set()
    scored = green = 0
    for i in range(first, len(seq)):
        window, token = seq[i - config.window:i], seq[i]
        if ignore_repeated_ngrams:
            gram = (*window, token)
            if gram in seen:
                continue
            seen.add(gram)
        scored += 1
        green += oracle.is_green(window, token)
    z = z_score(green, scored, config.gamma)
    return {
        "num_tokens_scored": scored,
        "num_green_tokens": green,
        "green_fraction": green / scored if scored else 0.0,
        "z_score": z,
        "p_value": float(norm.sf(z)) if scored else 1.0,
        "binomial_p_value": binomial_p_value(green, scored, config.gamma),
        "prediction": bool(scored and z >= threshold),
        "threshold": threshold,
    }


def gateway_processor(settings, teacher) -> KeyedWatermarkProcessor:
    """The gateway hook: the watermark processor for a local backend, from `GuardSettings`."""
    return watermark_processor(WatermarkConfig.from_settings(settings), len(teacher.tokenizer))
