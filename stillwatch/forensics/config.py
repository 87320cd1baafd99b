"""The forensics settings objects, in a module light enough for any settings object or CLI to import (no
torch, no transformers): the watermark's and antidistillation's parameters, their defaults and their checks.

`GuardSettings` takes its serving defaults from these dataclasses, and the gateway builds them back from its
settings (`WatermarkConfig.from_settings`, `AntidistillConfig.from_settings`): each default exists once.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from stillwatch.errors import ConfigError

KEY_ENV = "STILLWATCH_WATERMARK_KEY"
Seeding = Literal["lefthash", "selfhash"]
_KEY_LABEL = b"stillwatch/watermark/hashing-key/v1"
_WINDOW_LABEL = b"stillwatch/watermark/window-hash/v1"
_FINGERPRINT_LABEL = b"stillwatch/watermark/fingerprint/v1"
TRANSFORMERS_DEFAULT_KEY = 15485863  # the public key in transformers' docs: never used here


def _hmac(secret: str, label: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), label, hashlib.sha256).digest()


@dataclass(frozen=True)
class WatermarkConfig:
    """Green-list watermark settings: γ (green fraction), δ (logit bias), context width and seeding scheme.

    Defaults: γ=0.25 and δ=2.0 (Kirchenbauer et al.'s recommended operating point) with a one-token `lefthash`
    window. A bias of δ changes a greedy choice only where the top two logits are closer than δ, so confident
    (low-entropy) reasoning tokens keep their argmax while open-ended tokens carry the signal; bench/forensics.py
    measures the accuracy cost per task.
    """

    key: str = field(repr=False)
    gamma: float = 0.25
    delta: float = 2.0
    context_width: int = 1
    seeding: Seeding = "lefthash"

    @classmethod
    def from_settings(cls, settings: Any, key: str | None = None) -> "WatermarkConfig":
        """The watermark a gateway serves: γ, δ and width from `GuardSettings`, the key from its
        `watermark_key` (or `key`, e.g. the demo's fixed one)."""
        if key is None:
            secret = settings.watermark_key
            key = secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret
        if not key:
            raise ConfigError("the gateway's watermark needs a key (STILLWATCH_WATERMARK_KEY or "
                              "--watermark-key-file)")
        return cls(key=key, gamma=settings.watermark_gamma, delta=settings.watermark_delta,
                   context_width=settings.watermark_context_width)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ConfigError("the watermark key must be a non-empty secret string")
        if not 0.0 < self.gamma < 1.0:
            raise ConfigError(f"watermark gamma must be in (0, 1), got {self.gamma}")
        if self.delta < 0:
            raise ConfigError(f"watermark delta must be >= 0, got {self.delta}")
        if not 1 <= self.context_width <= 16:
            raise ConfigError(f"watermark context width must be between 1 and 16, got {self.context_width}")
        if self.seeding not in ("lefthash", "selfhash"):
            raise ConfigError(f"watermark seeding must be lefthash or selfhash, got {self.seeding!r}")

    @property
    def hashing_key(self) -> int:
        """The integer key for transformers' processor: HMAC-SHA256(secret) truncated to 63 bits."""
        value = int.from_bytes(_hmac(self.key, _KEY_LABEL)[:8], "big") & ((1 << 63) - 1)
        return value if value not in (0, TRANSFORMERS_DEFAULT_KEY) else value + 1

    @property
    def window_key(self) -> bytes:
        """The BLAKE2b key for hashing windows wider than one token."""
        return _hmac(self.key, _WINDOW_LABEL)[:32]

    @property
    def fingerprint(self) -> str:
        """A public identifier of the key (reports name the key without revealing it)."""
        return _hmac(self.key, _FINGERPRINT_LABEL)[:6].hex()

    @property
    def window(self) -> int:
        """Tokens before the scored token that decide its green list (selfhash also uses the token itself)."""
        return self.context_width if self.seeding == "lefthash" else self.context_width - 1

    @property
    def transformers_compatible(self) -> bool:
        """True when transformers' own processor and detector implement exactly this configuration."""
        return self.seeding == "selfhash" or self.context_width == 1

    def to_transformers(self) -> Any:
        """The same settings as a `transformers.WatermarkingConfig` (for `WatermarkDetector`)."""
        from transformers import WatermarkingConfig

        return WatermarkingConfig(greenlist_ratio=self.gamma, bias=self.delta, hashing_key=self.hashing_key,
                                  seeding_scheme=self.seeding, context_width=self.context_width)

    def public_dict(self) -> dict:
        """Settings for reports and stores: everything but the secret, plus its fingerprint."""
        return {"scheme": "kirchenbauer-greenlist", "gamma": self.gamma, "delta": self.delta,
                "context_width": self.context_width, "seeding": self.seeding, "key_fingerprint": self.fingerprint}




@dataclass(frozen=True)
class AntidistillConfig:
    """λ (strength), ε (finite-difference step) and the held-out set that defines the student's loss."""

    lam: float = 0.1  # the benchmark's best trade-off with a competent proxy; Δ's scale depends on the proxy
    epsilon: float = 1e-2
    holdout_tasks: tuple[str, ...] = ("add", "mul", "chain")
    holdout_n: int = 64
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> "AntidistillConfig":
        """λ and ε from `GuardSettings`."""
        return cls(lam=settings.antidistill_lambda, epsilon=settings.antidistill_epsilon)

    def __post_init__(self) -> None:
        if self.lam < 0 or self.epsilon <= 0 or self.holdout_n < 1:
            raise ConfigError(f"impossible antidistillation settings: lambda={self.lam} epsilon={self.epsilon} "
                              f"holdout_n={self.holdout_n}")


def default_of(cls: type, name: str) -> Any:
    """The default of one dataclass field (so that another settings object can take it, not copy it)."""
    for f in fields(cls):
        if f.name == name and f.default is not MISSING:
            return f.default
    raise KeyError(f"{cls.__name__}.{name} has no default")
