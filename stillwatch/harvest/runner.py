"""The async harvest runner: bounded concurrency, retries, clean stops, and resume from the store.

Resume. Prompts are read in chunks; for each chunk the store says which sample indices already exist, so a
complete prompt is skipped and a partial one (fewer samples than `--samples`) gets only its missing indices.
Every prompt's samples (every batch's, for a LocalTeacher) are committed in one small transaction as soon as
they arrive, so SIGKILL at any moment loses only work that was never reported done.

Concurrency. An in-process teacher (anything with LocalTeacher's `generate`) gets one batched `generate` call
per chunk of `concurrency` prompts. An endpoint gets `concurrency` workers, one request each in flight; the
endpoint teacher shares one rate gate among them (a 429 pauses them all until `Retry-After` and narrows how
many are in flight, so a rate limit slows the harvest and drops nothing) and retries connection errors,
timeouts and 5xx with back-off; on top of that a prompt whose request still fails is retried `retries`
times here, and the run stops after `max_consecutive_failures` failures in a row (an endpoint that is down).
A 401 or 403 stops at once: nothing else will succeed with that key.

Endpoints. Before the first request an endpoint teacher says what its server accepts (`OpenAITeacher.plan`:
vLLM's extensions or standard parameters only, and its top-k limit); the store records it under `server`,
and a top k cut to the server's limit is said in one line on stderr. Chat prompts go out as their messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from stillwatch.errors import ConfigError, StillwatchError, TeacherError
from stillwatch.harvest.prompts import PromptItem
from stillwatch.harvest.select import Selector
from stillwatch.harvest.store import HarvestStore
from stillwatch.progress import LoggedProgress
from stillwatch.teachers.base import Teacher, run_on_own_loop
from stillwatch.teachers.completion import Completion, SamplingParams

_RESUME_CHUNK = 256  # prompts checked against the store per query
STRINGS_ONLY = "none: token strings only"  # the tokenizer fingerprint of a harvest whose ids are unknown


class HarvestStopped(TeacherError):
    """The harvest stopped early (refused key or account, or an endpoint that keeps failing); rows are kept."""

    def __init__(self, message: str, rows: int, status: int | None = None):
        super().__init__(message)
        self.rows, self.status = rows, status


@dataclass
class HarvestResult:
    """What one run of the harvester did."""

    prompts_done: int = 0  # prompts completed by this run
    prompts_skipped: int = 0  # prompts already complete in the store
    prompts_failed: int = 0  # prompts whose requests failed after every retry (re-run to retry them)
    rows_added: int = 0
    rows_dropped: int = 0  # samples a selection (verify, vote) did not keep
    rows_total: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


def derive_seed(seed: int | None, key: str) -> int | None:
    """A per-prompt (or per-batch) seed: reproducible whatever order the work runs in."""
    if seed is None:
        return None
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def harvest(teacher: Teacher, prompts: Iterable[PromptItem], store: HarvestStore, params: SamplingParams,
            concurrency: int = 8, total: int | None = None, progress: bool = True, retries: int = 2,
            max_consecutive_failures: int = 10, retry_delay: float = 2.0,
            selector: Selector | None = None) -> HarvestResult:
    """Collect `params.n` samples per prompt into `store`, resuming whatever an earlier run left undone.

    With a `selector` (harvest.select) only the samples it keeps become rows; the others are stored apart
    with their reasons."""
    return run_on_own_loop(teacher, harvest_async(teacher, prompts, store, params, concurrency, total, progress,
                                                  retries, max_consecutive_failures, retry_delay, selector))


async def harvest_async(teacher: Teacher, prompts: Iterable[PromptItem], store: HarvestStore,
                        params: SamplingParams, concurrency: int = 8, total: int | None = None,
                        progress: bool = True, retries: int = 2, max_consecutive_failures: int = 10,
                        retry_delay: float = 2.0, selector: Selector | None = None) -> HarvestResult:
    """`harvest` for callers already inside an event loop."""
    run = _Run(teacher, store, params, max(1, concurrency), retries, max_consecutive_failures, retry_delay,
               selector)
    return await run.main(prompts, total, progress)


class _RateColumn(ProgressColumn):
    """Prompts per second and generated tokens per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        tokens = task.fields.get("tokens", 0)
        tok_s = tokens / task.elapsed if task.elapsed else 0.0
        return Text(f"{speed or 0:.1f}/s {tok_s:,.0f} tok/s", style="progress.data.speed")


class _Run:
    def __init__(self, teacher: Teacher, store: HarvestStore, params: SamplingParams, concurrency: int,
                 retries: int, max_consecutive_failures: int, retry_delay: float, selector: Selector | None = None):
        self.teacher, self.store, self.params, self.selector = teacher, store, params, selector
        self.concurrency, self.retries, self.retry_delay = concurrency, retries, retry_delay
        self.max_failures = max(1, max_consecutive_failures)
        self.result = HarvestResult()
        self.consecutive_failures = 0
        self.stop: tuple[str, str, int | None] | None = None  # (reason, what to do, HTTP status)
        self.bar: LoggedProgress | None = None
        self.task_id: Any = None

    # -- orchestration ------------------------------------------------------------------------------------

    async def main(self, prompts: Iterable[PromptItem], total: int | None, progress: bool) -> HarvestResult:
        began = time.perf_counter()
        if self.selector is not None:
            recorded = self.store.meta().get("selection")
            if recorded is not None and {k: recorded.get(k) for k in ("verify", "vote")} != self.selector.describe():
                raise ConfigError(f"{self.store.path} was selected with {recorded.get('verify')!r}, vote "
                                  f"{recorded.get('vote')}; this run differs; use another store")
            self.store.set_meta(selection=self.selector.describe())
        await self._negotiate()
        self.bar = LoggedProgress(TextColumn("[bold]harvest"), BarColumn(bar_width=20), MofNCompleteColumn(),
                            TextColumn("{task.fields[rows]} rows"), _RateColumn(), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(compact=True),
                            console=Console(stderr=True), disable=not progress)
        try:
            with self.bar:
                self.task_id = self.bar.add_task("harvest", total=total, rows=0, tokens=0)
                if callable(getattr(self.teacher, "generate", None)):
                    await self._batched(prompts)
                else:
                    await self._pooled(prompts)
        finally:
            self.result.seconds = time.perf_counter() - began
            self.result.rows_total = self.store.count()
        if self.stop is not None:
            reason, hint, status = self.stop
            rows = self.result.rows_total
            raise HarvestStopped(f"harvest stopped: {reason}; {rows} rows collected in {self.store.path} are kept; "
                                 f"{hint}", rows, status)
        return self.result

    async def _negotiate(self) -> None:
        """Ask an endpoint teacher what its server takes; record it, and say so when the top k is cut."""
        plan = getattr(self.teacher, "plan", None)
        if not callable(plan):
            return
        from stillwatch.teachers.openai_teacher import AccessDenied

        try:
            decided = await plan(self.params.top_logprobs)
        except AccessDenied as exc:
            raise HarvestStopped(f"harvest stopped: {_one_line(exc)}; nothing was requested", self.store.count(),
                                 exc.status) from None
        self.store.set_meta(server=decided)
        if not decided["token_ids"] and getattr(self.teacher, "tokenizer", None) is None \
                and "tokenizer" not in self.store.meta():
            # Rows will hold token strings, not ids: a fingerprint no tokenizer has sends every student down
            # the re-encoding (sft) or alignment (kd) path, which reads those strings.
            self.store.set_meta(tokenizer={"fingerprint": STRINGS_ONLY, "tokens": None})
        top = decided["top_logprobs"]
        print(f"harvest: {decided['kind']}-style endpoint ({decided['decided_by']})", file=sys.stderr)
        if top["capped"]:
            print(f"harvest: top_logprobs {top['requested']} is above this {decided['kind']} endpoint's limit on "
                  f"the {decided['api']} API; asking for {top['sent']}", file=sys.stderr)
            self.params = replace(self.params, top_logprobs=top["sent"])

    def _pending(self, prompts: Iterable[PromptItem]) -> Iterator[tuple[PromptItem, list[int]]]:
        """(prompt, missing sample indices) for every prompt not yet complete in the store."""
        n = self.params.n
        for chunk in _chunks(iter(prompts), _RESUME_CHUNK):
            have = self.store.existing_samples([item.prompt_id for item in chunk])
            for item in chunk:
                missing = [i for i in range(n) if i not in have.get(item.prompt_id, ())]
                if missing:
                    yield item, missing
                else:
                    self.result.prompts_skipped += 1
                    self._advance_total(-1)

    def _advance_total(self, delta: int) -> None:
        task = self.bar.tasks[0] if self.bar and self.bar.tasks else None
        if task is not None and task.total is not None:
            self.bar.update(self.task_id, total=max(0, task.total + delta))

    def _record(self, item: PromptItem, indices: list[int], completions: list[Completion], params: SamplingParams,
                rows: list | None = None, dropped: list | None = None) -> None:
        """Queue (batched) or commit (pooled) one prompt's samples, kept or dropped, and count them."""
        decisions = (self.selector.select(item, [c.text for c in completions]) if self.selector is not None
                     else [None] * len(completions))
        record = [(item, index, c, self.teacher.name, params.to_dict())
                  for index, c, d in zip(indices, completions, decisions) if d is None]
        drops = [(item, index, c, d) for index, c, d in zip(indices, completions, decisions) if d is not None]
        self.result.rows_dropped += len(drops)
        if rows is not None:
            rows.extend(record)
            dropped.extend(drops)  # type: ignore[union-attr]
        else:
            self.result.rows_added += self.store.add(record, drops)
        self.result.prompts_done += 1
        self.result.completion_tokens += sum(c.completion_tokens for c in completions)

    def _tick(self, prompts: int) -> None:
        self.bar.update(self.task_id, advance=prompts, rows=self.result.rows_added,
                        tokens=self.result.completion_tokens)

    def _failed(self, exc: Exception) -> None:
        self.result.prompts_failed += 1
        self.consecutive_failures += 1
        self._tick(1)
        if self.consecutive_failures >= self.max_failures and self.stop is None:
            self.stop = (f"{self.consecutive_failures} prompts failed in a row (last: {_one_line(exc)})",
                         "re-run the same command to resume", None)

    def _denied(self, exc: StillwatchError) -> None:
        if self.stop is None:
            self.stop = (_one_line(exc), "re-run the same command with a working key to resume",
                         getattr(exc, "status", None))

    # -- an in-process teacher: one batched generate call per chunk ---------------------------------------

    async def _batched(self, prompts: Iterable[PromptItem]) -> None:
        groups: dict[int, list[tuple[PromptItem, list[int]]]] = {}
        for item, missing in self._pending(prompts):
            group = groups.setdefault(len(missing), [])
            group.append((item, missing))
            if len(group) >= self.concurrency:
                await self._generate(groups.pop(len(missing)))
            if self.stop is not None:
                return
        for group in groups.values():
            await self._generate(group)
            if self.stop is not None:
                return

    async def _generate(self, jobs: list[tuple[PromptItem, list[int]]]) -> None:
        # One seed per batch (torch draws the whole batch from one generator), derived from its first prompt.
        params = replace(self.params, n=len(jobs[0][1]), seed=derive_seed(self.params.seed, jobs[0][0].prompt_id))
        try:
            outputs = await asyncio.to_thread(self.teacher.generate, [item.prompt for item, _ in jobs], params)
        except StillwatchError as exc:
            if len(jobs) == 1:
                self._failed(exc)
                return
            for job in jobs:  # one bad prompt (say, too long) must not sink its whole batch
                await self._generate([job])
                if self.stop is not None:
                    return
            return
        rows: list = []
        dropped: list = []
        for (item, missing), completions in zip(jobs, outputs):
            self._record(item, missing, completions, params, rows, dropped)
        self.result.rows_added += self.store.add(rows, dropped)
        self.consecutive_failures = 0
        self._tick(len(jobs))

    # -- an endpoint: `concurrency` workers, one request each -------------------------------------------

    async def _pooled(self, prompts: Iterable[PromptItem]) -> None:
        queue: asyncio.Queue = asyncio.Queue(maxsize=2 * self.concurrency)

        async def produce() -> None:
            try:
                for job in self._pending(prompts):
                    if self.stop is not None:
                        break
                    await queue.put(job)
            finally:
                for _ in range(self.concurrency):
                    await queue.put(None)

        async def work() -> None:
            while (job := await queue.get()) is not None:
                if self.stop is None:
                    await self._request(*job)

        await asyncio.gather(produce(), *(work() for _ in range(self.concurrency)))

    async def _request(self, item: PromptItem, missing: list[int]) -> None:
        from stillwatch.teachers.openai_teacher import AccessDenied

        params = replace(self.params, n=len(missing), seed=derive_seed(self.params.seed, item.prompt_id))
        for attempt in range(self.retries + 1):
            try:
                request = item.request() if getattr(self.teacher, "api", "chat") == "chat" else item.prompt
                completions = (await self.teacher.complete([request], params))[0]
            except AccessDenied as exc:
                self._denied(exc)
                return
            except Exception as exc:  # the client has retried already; a malformed reply must not end the run
                if attempt < self.retries and self.stop is None:
                    await asyncio.sleep(self.retry_delay * 2 ** attempt)
                    continue
                self._failed(exc)
                return
            self._record(item, missing, completions, params)
            self.consecutive_failures = 0
            self._tick(1)
            return


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := [x for _, x in zip(range(size), items)]:
        yield chunk


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
