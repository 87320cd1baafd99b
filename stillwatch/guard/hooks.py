"""Forensics hooks: the logits processors the local backend adds to generation.

One seam, so that the backend never needs to know how a watermark or antidistillation sampling works. Both
are built from `GuardSettings` (`WatermarkConfig.from_settings`, `AntidistillConfig.from_settings`), so the
γ, δ, width, λ and ε a gateway serves are the ones its settings say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from stillwatch.guard.settings import GuardSettings


@dataclass
class ForensicsHooks:
    """`always` goes into every generation (the watermark); `degrade` only into degraded accounts' requests."""

    always: Sequence[Any] = field(default_factory=tuple)
    degrade: Sequence[Any] = field(default_factory=tuple)
    # Whether `degrade` can really be built (None: whether any processor was given).
    degradable: bool | None = None

    @property
    def can_degrade(self) -> bool:
        """Whether a degraded account can be served antidistilled traces."""
        return bool(self.degrade) if self.degradable is None else self.degradable

    def processors(self, degraded: bool) -> tuple[Any, ...]:
        """Logits processors for one request."""
        return tuple(self.always) + (tuple(self.degrade) if degraded else ())


def load_hooks(settings: GuardSettings, teacher: Any) -> ForensicsHooks:
    """Build the processors the settings ask for; refuse to start rather than serve unwatermarked text."""
    always: list[Any] = []
    if settings.watermark_key is not None:
        from stillwatch.forensics.watermark import gateway_processor  # torch and transformers: only here

        always.append(gateway_processor(settings, teacher))
    # The antidistillation processor is built lazily on the first degraded request: it needs a proxy student,
    # which most deployments never load.
    return ForensicsHooks(always=always, degrade=_LazyAntidistill(settings, teacher),
                          degradable=settings.antidistill_proxy is not None)


class _LazyAntidistill(Sequence):
    """A one-item sequence whose processor is built on first use (degraded accounts are rare)."""

    def __init__(self, settings: GuardSettings, teacher: Any):
        self.settings, self.teacher, self._item = settings, teacher, None

    def _get(self) -> Any:
        if self._item is None:
            from stillwatch.forensics.antidistill import gateway_processor

            self._item = gateway_processor(self.settings, self.teacher)
        return self._item

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index):
        if index not in (0, -1):
            raise IndexError(index)
        return self._get()

    def __iter__(self):
        yield self._get()
