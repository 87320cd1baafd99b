"""Each detection signal on synthetic traffic where the answer is known."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stillwatch.detect.embed import embed, embed_many, normalise
from stillwatch.detect.events import Event, prompt_text
from stillwatch.detect.signals.coverage import CoverageCounts, DistinctSketch, coverage
from stillwatch.detect.signals.elicitation import elicitation
from stillwatch.detect.signals.linkage import link, linkage, profile
from stillwatch.detect.signals.mmd import mmd
from stillwatch.detect.signals.params import params
from stillwatch.detect.signals.prada import PradaTracker, prada
from stillwatch.detect.signals.templates import templates
from stillwatch.detect.signals.timing import timing
from stillwatch.detect.signals.volume import volume
from stillwatch.detect.traffic import harvest_prompts, plan, to_events

KEYS = {"signal", "score", "threshold", "flagged", "explanation"}


def ev(prompt: str = "hi", t: float = 0.0, account: str = "a", **kw) -> Event:
    return Event(account=account, time=t, prompt=prompt, **kw)


def chat_events(n: int = 200, seed: int = 0) -> list[Event]:
    return to_events("chat", [p for i in range(n // 10 + 1) for p in plan("chat", seed + i, 3600)][:n])


def test_event_from_row_reads_both_logprob_spellings_and_chat_json():
    chat = Event.from_row({"account": "x", "time": "2026-01-01T00:00:00+00:00", "endpoint": "/v1/chat/completions",
                           "prompt": '[{"role": "user", "content": "hello"}]',
                           "params": {"logprobs": True, "top_logprobs": 5, "n": 3, "seed": 7}})
    assert (chat.prompt, chat.top_logprobs, chat.n, chat.seed) == ("hello", 5, 3, 7) and chat.time > 0
    legacy = Event.from_params("x", 0.0, "/v1/completions", "add: 1+2", {"logprobs": 4})
    assert legacy.logprobs and legacy.top_logprobs == 4
    assert prompt_text([1, 2, 3]) == "" and len(prompt_text("x" * 10**6)) <= 2000


def test_embedding_is_stable_and_unit_length():
    a, b = embed("add: 1234+5678"), embed("add: 1234+5678")
    assert np.allclose(a, b) and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert normalise("Add:  12+345") == "add: 00+000"
    assert embed_many([]).shape[0] == 0 and not embed("").any()


def test_every_signal_returns_the_named_score_shape():
    events = chat_events(60)
    for result in (volume(events), templates(events), coverage(events), params(events), timing(events),
                   prada([0.1] * 40), elicitation([{"flagged": False}] * 5),
                   mmd(embed_many([e.prompt for e in events]), embed_many([e.prompt for e in events]))):
        assert KEYS <= set(result) and 0.0 <= result["score"] <= 1.0, result


def test_volume_scales_with_requests_and_rate():
    slow = [ev(t=i * 60.0) for i in range(50)]
    fast = [ev(t=i * 0.1) for i in range(2000)]
    assert volume(slow)["score"] < 0.05
    assert volume(fast)["flagged"] and volume(fast)["requests_per_minute"] > 240


def test_timing_tells_a_clock_from_poisson_arrivals():
    rng = random.Random(0)
    clock = [ev(t=i * 2.0 + rng.uniform(-0.05, 0.05)) for i in range(100)]
    t, poisson = 0.0, []
    for _ in range(100):
        t += rng.expovariate(0.5)
        poisson.append(ev(t=t))
    assert timing(clock)["flagged"] and timing(clock)["cv"] < 0.1
    assert not timing(poisson)["flagged"] and 0.7 < timing(poisson)["cv"] < 1.3
    assert timing(clock[:5])["score"] == 0.0  # too few to judge


def test_templates_catch_one_template_and_paraphrases_but_not_chat():
    one = [ev(f"add: {i}+{2 * i}") for i in range(1000, 1300)]
    assert templates(one)["flagged"] and templates(one)["top_template_share"] == 1.0
    chat = templates(chat_events(300))
    assert chat["score"] < 0.5, chat
    paraphrase = to_events("p", plan("paraphrase", 0, 3600))
    assert templates(paraphrase)["near_duplicate_share"] > templates(chat_events(300))["near_duplicate_share"]


def test_coverage_flags_uniform_harvests_not_skewed_apps():
    harvest = [ev(p) for p in harvest_prompts(0, 800)]
    app = to_events("app", plan("app", 0, 3600, scale=2.0))
    h, a = coverage(harvest), coverage(app)
    assert h["flagged"] and h["num_tasks"] == 4 and h["p_uniform"] > 0.01, h
    assert a["score"] < 0.1 and a["num_tasks"] == 1, a
    small = coverage(harvest[:40])
    assert small["score"] < h["score"]  # a few uniform prompts are not a harvest


def test_distinct_sketch_is_exact_below_k_and_close_above():
    sk = DistinctSketch(k=64)
    for i in range(50):
        sk.add(str(i))
        sk.add(str(i))
    assert sk.estimate() == 50
    for i in range(5000):
        sk.add(f"x{i}")
    assert 3500 < sk.estimate() < 7500
    merged = CoverageCounts().merge(CoverageCounts())
    assert merged.prompts == 0


def test_params_fingerprints():
    harvest = [ev(f"add: {i}+1", logprobs=True, top_logprobs=5) for i in range(1000, 1400)]
    assert params(harvest)["flagged"] and params(harvest)["components"]["top_logprobs"] == 1.0
    diverse = [ev(f"story: {w}", n=8, temperature=1.2) for w in ("cat", "dog", "owl") for _ in range(60)]
    assert params(diverse)["components"]["n"] == 1.0
    sweep = [ev(f"add: {i}+1", temperature=t) for i in range(1000, 1400) for t in (0.0, 0.5, 1.0)]
    assert params(sweep)["components"]["temperature_sweep"] == 1.0
    researcher = to_events("r", plan("researcher", 0, 3600))
    assert not params(researcher)["flagged"], params(researcher)
    assert params([ev() for _ in range(100)])["score"] == 0.0


def test_prada_flags_non_normal_distances_only():
    rng = np.random.default_rng(0)
    assert not prada(rng.normal(1.0, 0.1, 200))["flagged"]
    assert prada(np.concatenate([np.zeros(150), rng.normal(1, 0.1, 50)]))["flagged"]
    assert prada([0.5] * 100)["flagged"] and prada([0.5] * 5)["score"] == 0.0
    tracker = PradaTracker()
    for p in harvest_prompts(0, 100):
        tracker.update(embed(p))
    assert tracker.result()["num_distances"] == 99


def test_mmd_separates_attacker_windows_from_benign_ones():
    benign = embed_many([e.prompt for e in chat_events(200, seed=1)])
    other_benign = embed_many([e.prompt for e in chat_events(64, seed=99)])
    attack = embed_many(harvest_prompts(0, 64))
    hit, miss = mmd(attack, benign), mmd(other_benign, benign)
    assert hit["flagged"] and hit["p_value"] <= 0.05, hit
    assert not miss["flagged"], miss
    assert mmd(attack[:5], benign)["score"] == 0.0


def test_elicitation_needs_a_steady_share():
    one = [{"flagged": True, "category": "reasoning_elicitation"}] + [{"flagged": False}] * 99
    many = [{"flagged": True, "category": "reasoning_elicitation"}] * 40 + [{"flagged": False}] * 60
    assert not elicitation(one)["flagged"]
    assert elicitation(many)["flagged"] and elicitation(many)["categories"] == {"reasoning_elicitation": 40}


def test_elicitation_signal_over_the_packaged_classifier():
    from stillwatch.detect.signals.elicitation import classifier_scorer

    score = classifier_scorer()
    attack = [score(p.text) for p in plan("elicit", 0, 3600)[:60]]
    honest = [score(e.prompt) for e in chat_events(60)]
    assert elicitation(attack)["flagged"] and not elicitation(honest)["flagged"]


def test_linkage_joins_a_sharded_campaign_and_not_independent_chat_users():
    k = 12
    profiles = []
    for i in range(k):
        events = to_events(f"camp{i}", plan("campaign", 0, 3600, shard=(i, k)), addr=f"172.16.0.{i}")
        profiles.append(profile(f"camp{i}", events, created=1000.0 + i))
    for i in range(30):
        events = to_events(f"user{i}", plan("chat", i, 3600), addr=f"10.0.0.{i}")
        profiles.append(profile(f"user{i}", events, created=i * 86400.0))
    clusters = link(profiles)
    assert clusters == [sorted(f"camp{i}" for i in range(k))]
    members = [p for p in profiles if p.account.startswith("camp")]
    result = linkage(members)
    assert result["prompt_overlap"] < 0.05 and result["co_created_share"] == 1.0 and result["score"] > 0.3


def test_linkage_joins_accounts_behind_one_client_address():
    profiles = [profile(f"u{i}", [ev(account=f"u{i}", client_addr="10.9.9.9" if i < 3 else f"10.0.0.{i}")])
                for i in range(6)]
    assert link(profiles) == [["u0", "u1", "u2"]]
    assert linkage([p for p in profiles if p.account in ("u0", "u1", "u2")])["shared_addr_share"] == 1.0
