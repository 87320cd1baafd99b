"""The detector's fold, campaigns, offline/online agreement, and the policy file."""

from __future__ import annotations

import pytest

from stillwatch.detect.detector import Detector, DetectorConfig, detect, fold
from stillwatch.detect.policy import PolicyError, load_policy, parse_policy
from stillwatch.detect.traffic import Population, population_events
from stillwatch.errors import StillwatchError

HONEST = {"chat", "app", "eval", "researcher"}


CAMPAIGN = 8


@pytest.fixture(scope="module")
def scorer():
    """The packaged elicitation classifier, memoised: both runs of the same prompts pay for it once."""
    from functools import lru_cache

    from stillwatch.detect.signals.elicitation import classifier_scorer

    return lru_cache(maxsize=None)(classifier_scorer())


@pytest.fixture(scope="module")
def verdicts(scorer):
    # Small on purpose (about 1,600 events): every profile kind that matters, in seconds on a busy 2-core box.
    pop = Population(honest={"chat": 10, "app": 1, "eval": 1, "researcher": 1},
                     attackers={"bulk": 1, "diversity": 1, "elicit": 1}, campaign_accounts=CAMPAIGN)
    events, truth, created = population_events(pop, seed=0, duration=3600)
    events = [e for e in events if e.account != "attacker-bulk-0" or e.time < 600]  # a bulk harvester caught early
    return detect(events, created=created, elicit_scorer=scorer), truth, events, created


def test_attackers_are_stopped_and_honest_users_allowed(verdicts):
    results, truth, _, _ = verdicts
    policy = load_policy()
    for a in results:
        action = policy.action(a.risk, a.basis_requests)
        if truth[a.account] in HONEST:
            assert action == "allow", (a.account, a.risk, a.reasons)
        else:
            assert action in ("hide_reasoning", "degrade", "block"), (a.account, a.risk, a.reasons)
            assert a.reasons and all(r["explanation"] for r in a.reasons)


def test_the_campaign_is_one_cluster_and_its_members_carry_its_risk(verdicts):
    results, truth, _, _ = verdicts
    members = [a for a in results if truth[a.account] == "campaign"]
    assert len({a.cluster for a in members}) == 1 and members[0].cluster_size >= CAMPAIGN
    assert all(a.reasons[0]["signal"].startswith("campaign.") for a in members)
    assert members[0].signals["campaign"]["signals"]["linkage"]["co_created_share"] > 0.8  # the bulk harvester may join it


def test_online_feeding_gives_the_offline_verdicts(verdicts, scorer):
    results, _, events, created = verdicts
    online = Detector(elicit_scorer=scorer)
    for name, when in created.items():
        online.created(name, when)
    for e in events:  # one at a time, as the gateway's worker would
        online.observe(e)
    again = {a.account: round(a.risk, 9) for a in online.assess_all()}
    assert again == {a.account: round(a.risk, 9) for a in results}


def test_memory_per_account_is_bounded():
    det = Detector(DetectorConfig(window=64, use_elicitation=False))
    from stillwatch.detect.traffic import plan, to_events

    det.observe_many(to_events("big", plan("bulk", 0, 3600, scale=0.25)))
    state = det.accounts["big"]
    assert len(state.events) == 64 and len(state.vectors) <= 64 and state.requests > 4 * 64
    assert len(state.coverage.distinct.values) <= state.coverage.distinct.k


def test_fold_is_a_logistic_sum_with_reasons():
    config = DetectorConfig(use_elicitation=False)
    risk, reasons = fold({"coverage": {"score": 1.0, "explanation": "uniform"}, "volume": {"score": 0.1}}, config)
    assert risk == pytest.approx(1 / (1 + 2.718281828 ** -(config.bias + config.weights["coverage"] + 0.1)), rel=1e-6)
    assert [r["signal"] for r in reasons] == ["coverage"]


def test_unknown_weight_is_a_config_error():
    with pytest.raises(StillwatchError, match="unknown detector signal"):
        DetectorConfig(weights={"nonsense": 1.0})


def test_builtin_policy_grades_risk():
    policy = load_policy()
    assert [policy.action(r) for r in (0.1, 0.5, 0.65, 0.75, 0.9, 0.99)] == \
        ["allow", "flag", "throttle", "hide_reasoning", "degrade", "block"]
    assert policy.action(0.99, requests=3) == "allow"
    assert policy.action(0.9, unavailable=frozenset({"degrade"})) == "block"


@pytest.mark.parametrize("text, message", [
    ("steps: [", "not valid YAML"),
    ("- 1\n- 2", "a policy is a mapping"),
    ("version: x\nsteps: []", "steps"),
    ("version: x\nsteps:\n  - {action: explode, risk: 0.5}", "action"),
    ("version: x\nsteps:\n  - {action: block, risk: 0.5}\n  - {action: flag, risk: 0.9}", "more severe"),
    ("version: x\nsteps:\n  - {action: flag, risk: 0.9}\n  - {action: block, risk: 0.5}", "must rise"),
    ("version: x\nsteps:\n  - {action: flag, risk: 1.5}", "risk"),
    ("version: x\nsteps:\n  - {action: flag, risk: 0.5}\nfallback: {degrade: flag}", "stronger"),
    ("version: x\nsteps:\n  - {action: flag, risk: 0.5}\ncolour: red", "colour"),
])
def test_bad_policy_files_fail_with_a_clear_error(tmp_path, text, message):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match=message) as info:
        load_policy(path)
    assert str(path) in str(info.value) and isinstance(info.value, StillwatchError)


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "nope.yaml")


def test_a_custom_policy_replaces_the_builtin():
    policy = parse_policy("version: strict\nmin_requests: 0\nsteps:\n  - {action: block, risk: 0.2}")
    assert policy.version == "strict" and policy.action(0.3, requests=1) == "block"


def test_a_campaign_spread_thinner_than_the_minimum_per_account_is_judged_on_its_total(scorer):
    from collections import Counter

    from stillwatch.detect.policy import STOPPING

    pop = Population(honest={"chat": 10}, attackers={}, campaign_accounts=40)
    events, truth, created = population_events(pop, seed=2, duration=3600)
    seen: Counter = Counter()
    thin = []
    for e in events:  # every member stops after 12 requests: under the policy's 20 on its own
        if truth[e.account] == "campaign" and seen[e.account] >= 12:
            continue
        seen[e.account] += 1
        thin.append(e)
    policy = load_policy()
    members = [a for a in detect(thin, created=created, elicit_scorer=scorer) if truth[a.account] == "campaign"]
    assert all(a.requests == 12 < policy.min_requests <= a.basis_requests for a in members)
    assert all(policy.action(a.risk, a.basis_requests) in STOPPING for a in members)
