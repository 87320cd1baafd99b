"""Online detection in a live gateway: a bulk harvester is blocked automatically, with evidence; an honest app
is not; a bad policy file stops `serve` at start-up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from detect_support import stub_gateway
from guard_support import run_cli as _run

ADMIN = "online-admin-key-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from stillwatch.detect.simulate import SimulationConfig, simulate

    with stub_gateway(tmp_path_factory.mktemp("online"), ADMIN, detection_interval_s=0.5) as (server, db, app):
        config = SimulationConfig(endpoint=server.base_url, seed=0, duration=8.0, concurrency=8, max_requests=500,
                                  honest={"chat": 4, "app": 1}, attackers={"bulk": 1})
        outcome = simulate(config, ADMIN)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        deadline = time.monotonic() + 30  # the detector's last assessment may land after the traffic
        while time.monotonic() < deadline:
            bulk = httpx.get(f"{server.url}/admin/accounts/sim-bulk-0", headers=admin, timeout=10).json()
            if bulk["blocked"] or (bulk["hide_reasoning"] and time.monotonic() > deadline - 20):
                break  # blocked, or hidden and no block 10 s after the traffic
            time.sleep(0.5)
        app_account = httpx.get(f"{server.url}/admin/accounts/sim-app-0", headers=admin, timeout=10).json()
        detection = app.state.gateway.detection
    return db, outcome, bulk, app_account, detection


def test_the_bulk_harvester_is_blocked_automatically(served):
    # Blocked on a quiet machine; on a loaded one the 8 s of traffic may only carry it to hidden reasoning.
    _, outcome, bulk, _, detection = served
    stopping = [a for a in bulk["actions"] if a["action"] in ("hide_reasoning", "block")]
    assert stopping and (bulk["hide_reasoning"] or bulk["blocked"])
    if bulk["blocked"]:
        assert bulk["block_reason"].startswith("automatic (builtin-1")
    action = stopping[-1]
    assert action["source"] == "detector" and action["policy_version"] == "builtin-1" and action["risk"] >= 0.6
    ev = action["evidence"]
    assert ev["reasons"] and ev["signals"]["coverage"]["score"] > 0 and ev["thresholds"]["crossed"]
    assert ev["examples"] and all(len(e["record_hash"]) == 64 and len(e["prompt_sha256"]) == 64
                                  for e in ev["examples"])
    assert detection.assessments > 0 and detection.leader and detection.observed >= bulk["actions"][0]["evidence"]["requests"]


def test_the_honest_accounts_are_not_touched(served):
    _, outcome, _, app_account, _ = served
    assert not app_account["blocked"] and not app_account["degraded"] and app_account["actions"] == []
    by = {a["account"]: a for a in outcome["accounts"]}
    assert by["sim-app-0"]["refused"] == 0 and by["sim-app-0"]["ok"] >= 20
    assert all(a["refused"] == 0 for name, a in by.items() if "-chat-" in name)


def test_the_evidence_is_on_the_command_line_and_the_chain_holds(served, capsys):
    db = served[0]
    code, out, err = _run(capsys, "accounts", "show", "sim-bulk-0", "--db", db)
    assert code == 0 and "sim-bulk-0" in out and "actions" in out
    code, out, err = _run(capsys, "accounts", "show", "sim-bulk-0", "--json", "--db", db)
    shown = json.loads(out)
    assert code == 0 and (shown["blocked"] or shown["hide_reasoning"])
    assert [a["source"] for a in shown["actions"]][-1] == "detector"
    assert shown["actions"][-1]["evidence"]["policy_version"] == "builtin-1"
    assert _run(capsys, "accounts", "show", "nobody", "--db", db)[0] == 2
    code, out, _ = _run(capsys, "audit", "verify", "--db", db)
    assert code == 0 and out.startswith("audit chain holds")


def test_a_bad_policy_file_stops_the_app_and_serve(tmp_path: Path, capsys):
    from stillwatch.detect.policy import PolicyError
    from stillwatch.guard.app import create_app
    from stillwatch.guard.settings import GuardSettings

    bad = tmp_path / "policy.yaml"
    bad.write_text("version: x\nsteps:\n  - {action: explode, risk: 0.5}\n")
    with pytest.raises(PolicyError, match="action"):
        create_app(GuardSettings(db_url=f"sqlite:///{tmp_path / 'a.db'}", policy_file=bad), backend=object())
    code, out, err = _run(capsys, "serve", "--upstream", "http://127.0.0.1:9/v1", "--db",
                          f"sqlite:///{tmp_path / 'b.db'}", "--port", "0", "--policy", str(bad))
    assert code == 2 and out == "" and err.count("\n") == 1 and str(bad) in err
