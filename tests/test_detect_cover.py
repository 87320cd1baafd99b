"""The cover signal on synthetic traffic where the answer is known: a uniform task harvest interleaved with chat
is caught; the same harvest alone (an eval set), a skewed app, chat alone, a set run as one batch between chats,
and a person doing a few dozen sums between chats are not."""

from __future__ import annotations

import random

from stillwatch.detect.events import Event
from stillwatch.detect.signals.coverage import CoverageCounts
from stillwatch.detect.signals.cover import CoverConfig, cover, is_task
from stillwatch.detect.traffic import harvest_prompts, plan

KEYS = {"signal", "score", "threshold", "flagged", "explanation"}


def judge(prompts: list[str], config: CoverConfig = CoverConfig()) -> dict:
    counts = CoverageCounts()
    for p in prompts:
        counts.add(p)
    return cover([Event(account="a", time=float(i), prompt=p) for i, p in enumerate(prompts)], counts, config)


def chat(n: int, seed: int = 0) -> list[str]:
    return [p.text for i in range(n // 5 + 1) for p in plan("chat", seed + i, 600)][:n]


def test_task_prompts_are_built_in_tasks_or_numbers():
    assert is_task("add: 12+34\n") and is_task("story: fox\n") and is_task("what is 17 times 23?")
    assert not is_task("write a short note about my cat")


def test_a_harvest_interleaved_with_chat_is_caught():
    tasks = harvest_prompts(3, 200)
    mixed = [p for pair in zip(tasks, chat(200)) for p in pair]
    r = judge(mixed)
    assert KEYS <= set(r) and r["flagged"] and r["score"] > 0.9, r
    assert r["interleave"] > 0.9 and 0.4 < r["chat_share"] < 0.6
    shuffled = mixed[:]
    random.Random(0).shuffle(shuffled)  # a random mix is spread through the chat too
    assert judge(shuffled)["flagged"]


def test_the_same_harvest_alone_is_left_to_coverage():
    # An eval runner's one fixed set: no chat, nothing hidden (coverage judges it with its own, larger bound).
    r = judge(harvest_prompts(3, 150))
    assert r["score"] == 0.0 and not r["flagged"] and r["num_chat"] == 0


def test_skewed_app_numbers_among_chat_are_not_a_harvest():
    app = [p.prompt for p in plan("app", 0, 600, scale=0.5)]
    mixed = [p for pair in zip(app, chat(len(app))) for p in pair]
    r = judge(mixed)
    assert r["harvest"] < 0.2 and r["score"] < 0.2, r


def test_a_set_run_as_one_batch_between_chats_is_not_interleaved():
    talk = chat(150)
    r = judge(talk[:75] + harvest_prompts(3, 150) + talk[75:])
    assert r["interleave"] < 0.05 and r["score"] == 0.0, r


def test_too_few_task_prompts_or_too_little_chat_say_nothing():
    few = harvest_prompts(3, 10)
    assert judge([p for pair in zip(few, chat(10)) for p in pair])["score"] == 0.0
    tasks = harvest_prompts(3, 200)
    stray = tasks[:100] + [chat(1)[0]] + tasks[100:]  # one stray message is no cover
    assert judge(stray)["score"] == 0.0
    assert judge(chat(300))["score"] == 0.0


def test_a_person_doing_sums_between_chats_is_not_a_harvest():
    # A tutor's whole plan: 40-120 requests, about 40% of them sums spread through the chat. Interleaved like
    # camouflage, but a person's volume: far under the bound.
    judged = 0
    for seed in range(8):
        r = judge([p.text for p in plan("tutor", seed, 1200.0)])
        assert r["score"] < 0.35, r
        if r["num_task"] >= CoverConfig().min_task:
            judged += 1
            assert r["interleave"] > 0.45 and r["harvest"] < 0.35, r
    assert judged >= 4  # most tutors send enough sums to be judged, and are judged harmless


def test_the_detector_stops_camouflage_and_leaves_eval_runners_apps_researchers_and_tutors():
    from stillwatch.detect.detector import DEFAULT_WEIGHTS, Detector, DetectorConfig
    from stillwatch.detect.policy import STOPPING, load_policy
    from stillwatch.detect.traffic import to_events

    det = Detector(DetectorConfig(use_elicitation=False))
    for prof in ("camouflage", "eval", "app", "researcher", "chat"):
        det.observe_many(to_events(prof, plan(prof, 1, 1200.0)[:400]))  # camouflage: 200 harvest prompts so far
    for seed in range(5):
        det.observe_many(to_events(f"tutor-{seed}", plan("tutor", seed, 1200.0)))
    policy = load_policy()
    actions = {a.account: policy.action(a.risk, a.basis_requests) for a in det.assess_all()}
    assert actions.pop("camouflage") in STOPPING
    assert set(actions.values()) == {"allow"}, actions
    without = Detector(DetectorConfig(use_elicitation=False, weights={**DEFAULT_WEIGHTS, "cover": 0.0}))
    without.observe_many(to_events("camouflage", plan("camouflage", 1, 1200.0)[:400]))
    alone = without.assess("camouflage")
    assert alone.risk > 0.001 and policy.action(alone.risk) == "allow"  # coverage alone lets it through
