"""One endpoint's rate limit, shared by every concurrent request of a teacher.

A harvest keeps `concurrency` requests in flight. When the endpoint answers 429 and each request backs off on
its own (the official client's retries), the others keep the limit saturated, and once the retries run out
prompts are dropped. Here every request of one teacher passes through one gate instead:

* a 429 holds every new request until the endpoint's `retry-after-ms` / `Retry-After` (else the reset of the
  limit that ran out, else a short back-off) and halves the requests allowed in flight (once per pause,
  however it began: the other 429s of the requests in flight then say nothing new); each run of that many
  successes lets one more in again, up to the concurrency asked for (additive increase, multiplicative
  decrease, as TCP's congestion control does);
* an answer whose `x-ratelimit-remaining-requests` the requests already in flight will spend holds new ones
  until `x-ratelimit-reset-requests`, before any 429;
* a 429 that says waiting will not help (`x-should-retry: false`, or OpenAI's `insufficient_quota`) is not
  retried, and neither is a request once the endpoint has answered nothing but 429 for `patience_s`.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Mapping

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?\Z")
DEFAULT_BACKOFF_S = 1.0  # a 429 that names no wait
MAX_PAUSE_S = 300.0  # no header makes the gate hold longer than this at once


def parse_duration(value: str | None) -> float | None:
    """Seconds in a rate-limit header: `1.5` (Retry-After), or OpenAI's `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        match = _DURATION.match(text)
        if not text or match is None:
            return None
        h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s + ms / 1000
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_wait(headers: Mapping[str, str]) -> float | None:
    """How long a 429 asks the client to wait: retry-after-ms, Retry-After, else the reset of the exhausted
    limit (requests before tokens)."""
    ms = parse_duration(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    for name in ("retry-after", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        wait = parse_duration(headers.get(name))
        if wait is not None:
            return wait
    return None


def waiting_helps(headers: Mapping[str, str], code: str | None) -> bool:
    """False for a 429 that no wait will cure: a spent quota, or the server's own `x-should-retry: false`."""
    return headers.get("x-should-retry", "").lower() != "false" and code != "insufficient_quota"


@dataclass
class RateStats:
    """What the gate did over a run: said in the harvest's summary."""

    limited: int = 0  # 429 answers
    paused_s: float = 0.0  # wall time during which new requests were held
    lowest_window: int = 0  # the fewest requests it allowed in flight

    def describe(self, ceiling: int) -> str:
        return (f"{self.limited} answers were 429; new requests were held {self.paused_s:.1f} s in all, and at "
                f"most {self.lowest_window} of {ceiling} were in flight at the tightest")


class RateGate:
    """Admission for one teacher's requests: `async with gate.slot(): ...`, then `succeeded` or `limited`."""

    def __init__(self, concurrency: int, patience_s: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 stats: RateStats | None = None):
        self.ceiling = max(1, int(concurrency))
        self.window = self.ceiling
        self.patience_s = patience_s
        self.stats = stats if stats is not None else RateStats(lowest_window=self.ceiling)
        self._clock = clock
        self._in_flight = 0
        self._not_before = 0.0
        self._streak = 0  # successes since the window last changed
        self._pauses = self._halved_in = 0  # pauses begun; the last one whose 429s narrowed the window
        self._last_success = clock()
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for room in the window and for any pause to end; hold one place while the request runs."""
        async with self._changed:
            while (wait := self._not_before - self._clock()) > 0 or self._in_flight >= self.window:
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=wait if wait > 0 else None)
                except TimeoutError:
                    pass
            self._in_flight += 1
        try:
            yield
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    async def succeeded(self, headers: Mapping[str, str]) -> None:
        """An answer, told from inside its slot: widen the window after a run of successes; pause if the
        requests it says are left will all go to those already in flight."""
        async with self._changed:
            self._last_success = self._clock()
            self._streak += 1
            if self._streak >= self.window and self.window < self.ceiling:
                self.window += 1
                self._streak = 0
                self._changed.notify_all()
            try:
                remaining = int(headers.get("x-ratelimit-remaining-requests", ""))
            except ValueError:
                return
            if remaining <= self._in_flight - 1:  # the others in flight will spend what is left
                self._pause(parse_duration(headers.get("x-ratelimit-reset-requests")))

    async def limited(self, headers: Mapping[str, str]) -> bool:
        """A 429: halve the window and pause everyone. False when the request should not be retried: the
        endpoint has refused every request for `patience_s`."""
        async with self._changed:
            self.stats.limited += 1
            self._pause(retry_wait(headers))
            if self._halved_in != self._pauses:  # the other 429s of one pause say nothing new
                self._halved_in = self._pauses
                self.window = max(1, self.window // 2)
                self.stats.lowest_window = min(self.stats.lowest_window, self.window)
                self._streak = 0
            return self._clock() - self._last_success < self.patience_s

    def _pause(self, wait: float | None) -> None:
        now = self._clock()
        until = now + min(MAX_PAUSE_S, DEFAULT_BACKOFF_S if wait is None else max(wait, 0.05))
        if now >= self._not_before:
            self._pauses += 1
        if until > self._not_before:
            self.stats.paused_s += until - max(now, self._not_before)
            self._not_before = until
