"""After the detector acts: the review queue, an operator's clearance kept in the history (and honoured until
new evidence appears), the evidence bundle that the audit chain backs, and the elicitation scores the detector
stores with every served record."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from detect_support import stub_gateway, wait_for
from guard_support import run_cli

ADMIN = "review-admin-key-0123456789"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with stub_gateway(tmp_path_factory.mktemp("review"), ADMIN, detection_interval_s=0.3) as (server, db, app):
        yield server, db, app.state.gateway.detection


def _admin(server, method: str, path: str, **kwargs):
    return httpx.request(method, f"{server.url}/admin{path}", headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=30, **kwargs)


def _harvest(server, seed: int, prefix: str = "sim"):
    from stillwatch.detect.simulate import SimulationConfig, simulate

    config = SimulationConfig(endpoint=server.base_url, seed=seed, duration=6.0, concurrency=8, max_requests=400,
                              honest={"chat": 3}, attackers={"bulk": 1}, prefix=prefix)
    return simulate(config, ADMIN)


def _stopped(server, name: str):
    """The account if the detector has stopped it (blocked, or served without reasoning), else None."""
    account = _admin(server, "GET", f"/accounts/{name}").json()
    return account if account["blocked"] or account["hide_reasoning"] or account["degraded"] else None


def test_a_stopped_harvester_waits_in_the_review_queue(gateway, capsys):
    server, db, _ = gateway
    _harvest(server, seed=0)
    assert wait_for(lambda: _stopped(server, "sim-bulk-0"))
    queue = _admin(server, "GET", "/review").json()["data"]
    assert [q["account"] for q in queue] == ["sim-bulk-0"] and queue[0]["source"] == "detector"
    code, out, _ = run_cli(capsys, "accounts", "review", "--json", "--db", db)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["account"] for r in rows] == ["sim-bulk-0"]
    assert rows[0]["action"] in ("block", "hide_reasoning")


def test_the_detector_stores_elicitation_scores_with_each_record(gateway):
    from stillwatch.guard.audit import served_page
    from stillwatch.guard.db import make_engine

    server, db, detection = gateway
    records = served_page(make_engine(db), 0, 1000, account="sim-bulk-0")
    assert records and all(r["elicit"] is not None and 0.0 <= r["elicit"]["score"] <= 1.0 for r in records)
    assert detection.observed >= len(records)


def test_elicitation_scores_can_be_recomputed_offline(gateway, capsys):
    server, db, _ = gateway
    code, out, _ = run_cli(capsys, "elicit", "rescore", "--db", db, "--missing-only")
    assert code == 0 and out.startswith("scored 0 served records")  # the detector scored every one already
    code, out, _ = run_cli(capsys, "elicit", "rescore", "--db", db)
    assert code == 0 and int(out.split()[1]) > 100


def test_the_evidence_bundle_cites_records_the_chain_backs(gateway, tmp_path: Path, capsys):
    from stillwatch.guard.evidence import verify_bundle

    server, db, _ = gateway
    out_file = tmp_path / "evidence.json"
    code, _, err = run_cli(capsys, "accounts", "evidence", "sim-bulk-0", "--out", str(out_file), "--db", db)
    bundle = json.loads(out_file.read_text())
    assert code == 0 and "chain hold" in err
    assert bundle["records"] and not bundle["missing"] and bundle["chain"]["ok"]
    cited = {e["record_hash"] for a in bundle["actions"] for e in a["evidence"].get("examples", [])}
    assert cited == {r["record_hash"] for r in bundle["records"]}
    assert bundle["all_records"]["count"] >= len(bundle["records"]) and verify_bundle(bundle) == []
    bundle["records"][0]["completion_tokens"] += 1  # an edited copy no longer matches its hash
    assert any("do not match its hash" in p for p in verify_bundle(bundle))
    assert _admin(server, "GET", "/accounts/sim-bulk-0/evidence").json()["format"] == "stillwatch-evidence/1"
    code, _, err = run_cli(capsys, "accounts", "evidence", "nobody", "--out", str(tmp_path / "x.json"), "--db", db)
    assert code == 2 and err.count("\n") == 1


def test_a_cleared_account_stays_cleared_until_new_evidence(gateway, capsys):
    server, db, detection = gateway
    code, _, _ = run_cli(capsys, "accounts", "clear", "sim-bulk-0", "--note", "reviewed: a licensed partner",
                         "--db", db)
    assert code == 0
    account = _admin(server, "GET", "/accounts/sim-bulk-0").json()
    assert not account["blocked"] and not account["hide_reasoning"] and account["throttle_rpm"] is None
    last = account["actions"][-1]
    assert last["source"] == "operator" and last["action"] == "clear" and last["note"].startswith("reviewed")
    assert last["evidence"]["before"]["blocked"] or last["evidence"]["before"]["hide_reasoning"]
    assert _admin(server, "GET", "/review").json()["data"] == []
    passes = detection.assessments
    # Honest traffic elsewhere keeps the detector assessing; the cleared account is not blocked again.
    _harvest(server, seed=1, prefix="other")
    wait_for(lambda: detection.assessments > passes + 2)
    assert wait_for(lambda: _stopped(server, "other-bulk-0"))
    assert _stopped(server, "sim-bulk-0") is None
    # New harvesting from the same account is new evidence: it is stopped again.
    _harvest(server, seed=0)
    again = wait_for(lambda: _stopped(server, "sim-bulk-0"))
    assert again and [a["source"] for a in again["actions"]][-1] == "detector"
    assert [a["action"] for a in again["actions"]].count("clear") == 1


def test_manual_actions_are_kept_with_their_notes(gateway, capsys):
    server, db, _ = gateway
    r = _admin(server, "POST", "/accounts/sim-chat-0/throttle", json={"rpm": 5, "note": "burst"})
    assert r.status_code == 200 and r.json()["throttle_rpm"] == 5
    assert _admin(server, "POST", "/accounts/sim-chat-0/throttle", json={"rpm": 0}).status_code == 400
    code, _, _ = run_cli(capsys, "accounts", "hide-reasoning", "sim-chat-0", "--note", "pending review", "--db", db)
    assert code == 0
    code, _, _ = run_cli(capsys, "accounts", "unthrottle", "sim-chat-0", "--db", db)
    account = _admin(server, "GET", "/accounts/sim-chat-0").json()
    assert code == 0 and account["hide_reasoning"] and account["throttle_rpm"] is None
    assert [(a["action"], a["source"], a["note"]) for a in account["actions"]] == [
        ("throttle", "operator", "burst"), ("hide_reasoning", "operator", "pending review"),
        ("unthrottle", "operator", None)]
    assert _admin(server, "POST", "/accounts/sim-bulk-0/confirm", json={"note": "upheld"}).status_code == 200
    assert all(q["account"] != "sim-bulk-0" for q in _admin(server, "GET", "/review").json()["data"])
