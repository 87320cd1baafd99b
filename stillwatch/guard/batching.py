"""Dynamic batching: concurrent requests share one model call.

Requests arriving within `wait_ms` of each other (or queued while the model was busy) are grouped by a key
that says which requests may share a call (same sampling parameters, same logits processors); each group is
one call of `run(key, payloads)` in a worker thread. The model is busy with one call at a time, which is what
makes batching pay: while a batch runs, the next one fills up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

Runner = Callable[[Hashable, list[Any]], Sequence[Any]]


@dataclass
class _Job:
    key: Hashable
    payload: Any
    size: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers jobs for up to `wait_ms`, groups them by key and runs each group in one `run` call."""

    def __init__(self, run: Runner, max_batch: int = 64, wait_ms: float = 5.0,
                 on_batch: Callable[[Hashable, int, float], None] | None = None):
        self.run, self.max_batch, self.wait_s = run, max(1, max_batch), max(0.0, wait_ms) / 1000.0
        self.on_batch = on_batch  # (key, sequences, seconds) for metrics
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the worker on the running loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._loop(), name="stillwatch-batcher")

    async def stop(self) -> None:
        """Stop the worker and fail whatever is still queued."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    def depth(self) -> int:
        """Requests waiting to join a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, key: Hashable, payload: Any, size: int = 1) -> Any:
        """Queue one job (`size` sequences) and wait for its result."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(key, payload, max(1, size), future))
        return await future

    async def _gather(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        total = jobs[0].size
        deadline = time.monotonic() + self.wait_s
        while total < self.max_batch:
            if not self._queue.empty():
                job = self._queue.get_nowait()
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except (asyncio.TimeoutError, TimeoutError):
                    break
            jobs.append(job)
            total += job.size
        return jobs

    async def _loop(self) -> None:
        while True:
            jobs = await self._gather()
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                if not job.future.cancelled():  # the client went away before we started
                    groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                await self._run_group(key, group)

    async def _run_group(self, key: Hashable, group: list[_Job]) -> None:
        start = time.perf_counter()
        try:
            results = await asyncio.to_thread(self.run, key, [job.payload for job in group])
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # one failing group must not stop the worker
            for job in group:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(key, sum(job.size for job in group), time.perf_counter() - start)
        for job, result in zip(group, results):
            if not job.future.done():
                job.future.set_result(result)
