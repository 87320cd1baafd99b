"""Detection across two `stillwatch serve` replicas on one PostgreSQL and one Redis: a campaign whose accounts
are split over both is stopped on both, one replica runs the detector (each action is taken once), and when
that replica is killed the other takes over."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from detect_support import wait_for
from guard_support import Server, fresh_postgres, mock_upstream, require_redis

ADMIN = "replica-detect-admin-key"
CAMPAIGN = 16
STOPPED = ("block", "hide_reasoning", "degrade")


def _account(server: Server, name: str) -> dict:
    r = httpx.get(f"{server.base_url}/admin/accounts/{name}", headers={"Authorization": f"Bearer {ADMIN}"},
                  timeout=20)
    assert r.status_code == 200, r.text
    return r.json()


def _stopped(account: dict) -> bool:
    return account["blocked"] or account["hide_reasoning"] or account["degraded"]


def _detector_role(server: Server) -> str:
    return httpx.get(f"{server.base_url}/health", timeout=10).json()["detector"]


def test_a_campaign_split_over_two_replicas_is_stopped_on_both(tmp_path: Path) -> None:
    from stillwatch.detect.simulate import SimulationConfig, simulate

    storage = f"{require_redis()}?prefix=sw-test-{uuid.uuid4().hex[:10]}"
    with fresh_postgres() as db, mock_upstream() as upstream:
        args = ["--upstream", upstream, "--db", db, "--rate-limit-storage", storage]
        env = {"STILLWATCH_ADMIN_KEY": ADMIN, "STILLWATCH_TRUSTED_PROXIES": "127.0.0.1",
               "STILLWATCH_DETECTION_INTERVAL_S": "0.5"}
        a, b = Server(args, env, tmp_path / "a.log"), Server(args, env, tmp_path / "b.log")
        try:
            a.launch(), b.launch()
            a.wait_ready(), b.wait_ready()
            config = SimulationConfig(endpoint=a.base_url, replicas=(b.base_url,), seed=0, duration=10.0,
                                      concurrency=8, max_requests=3000, honest={"chat": 6, "app": 1},
                                      attackers={}, campaign_accounts=CAMPAIGN, model="mock")
            outcome = simulate(config, ADMIN)
            served = {c["account"]: c["ok"] for c in outcome["accounts"]}
            members = [f"sim-campaign-{i}" for i in range(CAMPAIGN)]
            assert all(served[m] > 0 for m in members)
            # The campaign's members were served by both replicas; each replica sees every one stopped.
            assert wait_for(lambda: all(_stopped(_account(a, m)) for m in members), 60.0)
            assert all(_stopped(_account(b, m)) for m in members)
            for m in members:  # one detector ran: each action stored once, not once per replica
                actions = [x["action"] for x in _account(b, m)["actions"]]
                assert len(actions) == len(set(actions)) and set(actions) & set(STOPPED), (m, actions)
            honest = [c["account"] for c in outcome["accounts"] if c["kind"] == "honest"]
            assert not any(_stopped(_account(b, h)) or _account(b, h)["actions"] for h in honest)

            roles = {s.port: _detector_role(s) for s in (a, b)}
            assert sorted(roles.values()) == ["leader", "standby"], roles
            leader, other = (a, b) if roles[a.port] == "leader" else (b, a)
            leader.kill()  # its connection drops, the advisory lock frees, the other replica takes over
            bulk = SimulationConfig(endpoint=other.base_url, seed=1, duration=6.0, concurrency=8, max_requests=600,
                                    honest={}, attackers={"bulk": 1}, prefix="late", model="mock")
            simulate(bulk, ADMIN)
            assert wait_for(lambda: _stopped(_account(other, "late-bulk-0")), 60.0)
            assert _detector_role(other) == "leader"
        finally:
            a.stop()
            b.stop()
