"""The shared rate gate: headers read as OpenAI writes them, AIMD over the requests in flight, and a harvest
through a rate-limited strict endpoint that slows down and drops nothing."""

from __future__ import annotations

import asyncio
import time

import pytest

from endpoint_stubs import RateLimitedStub
from stillwatch.harvest import HarvestStopped, HarvestStore, harvest, task_source
from stillwatch.teachers.completion import SamplingParams
from stillwatch.teachers.openai_teacher import OpenAITeacher
from stillwatch.teachers.ratelimit import RateGate, parse_duration, retry_wait, waiting_helps


@pytest.mark.parametrize("text, seconds", [("1", 1.0), ("1.5", 1.5), ("20ms", 0.02), ("1s", 1.0), ("6m0s", 360.0),
                                           ("1h2m3s", 3723.0), ("0.5s", 0.5), ("2m", 120.0)])
def test_durations_as_servers_spell_them(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-1", "nan", "1x", None])
def test_unreadable_durations_are_none(text):
    assert parse_duration(text) is None


def test_retry_wait_prefers_the_most_precise_header():
    assert retry_wait({"retry-after-ms": "250", "retry-after": "3"}) == pytest.approx(0.25)
    assert retry_wait({"retry-after": "3", "x-ratelimit-reset-requests": "9s"}) == 3.0
    assert retry_wait({"x-ratelimit-reset-requests": "120ms"}) == pytest.approx(0.12)
    assert retry_wait({}) is None
    assert not waiting_helps({"x-should-retry": "false"}, "rate_limit_exceeded")
    assert not waiting_helps({}, "insufficient_quota")
    assert waiting_helps({"retry-after": "1"}, "rate_limit_exceeded")


def test_a_429_halves_the_window_and_successes_widen_it_again():
    async def run() -> list[int]:
        gate = RateGate(8)
        seen = [gate.window]
        for _ in range(2):
            await gate.limited({"retry-after-ms": "1"})
            seen.append(gate.window)
            await asyncio.sleep(0.06)  # past the pause (50 ms at least): the next 429 is news
        await gate.limited({"retry-after-ms": "200"})
        await gate.limited({"retry-after-ms": "200"})  # within the same pause: one decrease, not two
        seen.append(gate.window)
        for _ in range(1 + 2):  # a run of `window` successes per step: 1, then 2
            await gate.succeeded({})
        seen.append(gate.window)
        return seen + [gate.stats.limited, gate.stats.lowest_window]

    assert asyncio.run(run()) == [8, 4, 2, 1, 3, 4, 1]


def test_a_pause_holds_every_new_request_until_it_ends():
    async def run() -> tuple[float, float]:
        gate = RateGate(4)
        await gate.limited({"retry-after-ms": "300"})
        began = time.monotonic()
        async with gate.slot():
            held = time.monotonic() - began
        return held, gate.stats.paused_s

    held, paused = asyncio.run(run())
    assert held >= 0.28 and paused == pytest.approx(0.3, abs=0.01)


def test_an_answer_whose_requests_left_are_spoken_for_pauses_before_any_429():
    async def run() -> float:
        gate = RateGate(4)
        async with gate.slot():
            await gate.succeeded({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "9s"})
        async with gate.slot(), gate.slot():  # one left, and the other request in flight will take it
            await gate.succeeded({"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "200ms"})
        began = time.monotonic()
        async with gate.slot():
            return time.monotonic() - began

    assert asyncio.run(run()) >= 0.18


def test_the_window_bounds_requests_in_flight():
    async def run() -> int:
        gate = RateGate(8)
        await gate.limited({"retry-after-ms": "1"})  # window 4
        await asyncio.sleep(0.06)
        await gate.limited({"retry-after-ms": "1"})  # window 2
        busy = peak = 0

        async def one() -> None:
            nonlocal busy, peak
            async with gate.slot():
                busy += 1
                peak = max(peak, busy)
                await asyncio.sleep(0.01)
                busy -= 1

        await asyncio.gather(*(one() for _ in range(12)))
        return peak

    assert asyncio.run(run()) == 2


def test_a_rate_limited_harvest_slows_down_and_drops_nothing(tmp_path):
    # 10 requests a second against 16 workers: without a shared gate each would back off on its own and,
    # with few retries, prompts would be dropped.
    with RateLimitedStub(limit=10, per_s=1.0) as stub:
        teacher = OpenAITeacher(stub.url, "key", model="teacher", concurrency=16, max_retries=1)
        store = HarvestStore(tmp_path / "s.db", create=True)
        began = time.monotonic()
        result = harvest(teacher, task_source(["add"], 40), store, SamplingParams(max_tokens=8, top_logprobs=2),
                         concurrency=16, progress=False, retries=0)
        seconds = time.monotonic() - began
        statuses = list(stub.statuses)
    assert (result.prompts_done, result.prompts_failed, store.count()) == (40, 0, 40)
    assert statuses.count(200) == 40
    assert seconds >= 2.5  # 40 requests at 10 a second cannot take much less than 3 s
    # The headers' "none left" pauses everyone before the limit, so few requests are wasted on a 429.
    assert statuses.count(429) <= 16, statuses
    assert teacher.rate_stats.limited == statuses.count(429)


def test_a_spent_quota_stops_the_harvest_at_once(tmp_path):
    with RateLimitedStub(limit=10, per_s=1.0, spent=True) as stub:
        teacher = OpenAITeacher(stub.url, "key", model="teacher", concurrency=1, max_retries=3)
        store = HarvestStore(tmp_path / "s.db", create=True)
        with pytest.raises(HarvestStopped, match="waiting will not help") as stopped:
            harvest(teacher, task_source(["add"], 5), store, SamplingParams(max_tokens=8), concurrency=1,
                    progress=False)
        statuses = list(stub.statuses)
    assert stopped.value.status == 429
    assert statuses == [429]  # no retry of a request that no wait would cure


def test_an_endpoint_that_only_answers_429_is_given_up_after_the_patience(tmp_path):
    with RateLimitedStub(limit=0, per_s=0.05) as stub:
        teacher = OpenAITeacher(stub.url, "key", model="teacher", concurrency=2, rate_patience_s=0.5)
        store = HarvestStore(tmp_path / "s.db", create=True)
        result = harvest(teacher, task_source(["add"], 2), store, SamplingParams(max_tokens=8), concurrency=2,
                         progress=False, retries=0)
    assert (result.prompts_done, result.prompts_failed) == (0, 2)
