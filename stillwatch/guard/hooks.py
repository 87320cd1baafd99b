"""Forensics hooks: the logits processors the local backend adds to generation.

Kept behind this one seam so that the gateway runs before `stillwatch.forensics` exists, and so that the
backend never needs to know how a watermark or antidistillation sampling works.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Sequence

from stillwatch.errors import ConfigError
from stillwatch.guard.settings import GuardSettings


@dataclass
class ForensicsHooks:
    """`always` goes into every generation (the watermark); `degrade` only into degraded accounts' requests."""

    always: Sequence[Any] = field(default_factory=tuple)
    degrade: Sequence[Any] = field(default_factory=tuple)

    def processors(self, degraded: bool) -> tuple[Any, ...]:
        """Logits processors for one request."""
        return tuple(self.always) + (tuple(self.degrade) if degraded else ())


def _factory(module: str, name: str, what: str):
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"{what} is configured but {module} cannot be imported: {exc}") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise ConfigError(f"{what} is configured but {module} has no {name}()")
    return fn


def load_hooks(settings: GuardSettings, teacher: Any) -> ForensicsHooks:
    """Build the processors the settings ask for; refuse to start rather than serve unwatermarked text."""
    always: list[Any] = []
    if settings.watermark_key is not None:
        config_cls = _factory("stillwatch.forensics.watermark", "WatermarkConfig", "a watermark key")
        make = _factory("stillwatch.forensics.watermark", "watermark_processor", "a watermark key")
        config = config_cls(key=settings.watermark_key.get_secret_value())
        always.append(make(config, int(teacher.model.config.vocab_size)))
    # The antidistillation processor is built lazily on the first degraded request: it needs a proxy student,
    # which most deployments never load.
    return ForensicsHooks(always=always, degrade=_LazyAntidistill(settings, teacher))


class _LazyAntidistill(Sequence):
    """A one-item sequence whose processor is built on first use (degraded accounts are rare)."""

    def __init__(self, settings: GuardSettings, teacher: Any):
        self.settings, self.teacher, self._item = settings, teacher, None

    def _get(self) -> Any:
        if self._item is None:
            make = _factory("stillwatch.forensics.antidistill", "gateway_processor", "antidistillation sampling")
            self._item = make(self.settings, self.teacher)
        return self._item

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index):
        if index not in (0, -1):
            raise IndexError(index)
        return self._get()

    def __iter__(self):
        yield self._get()
