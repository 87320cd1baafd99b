"""The simulator through a live gateway, then the offline detector and `stillwatch detect` over its audit log."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from stillwatch.detect.simulate import SimulationConfig, clients, parse_counts, simulate
from stillwatch.errors import ConfigError

ADMIN = "sim-admin-key-0123456789"


@pytest.fixture(scope="module")
def gateway_db(tmp_path_factory):
    from detect_support import StubBackend
    from gateway_helpers import ServerThread

    from stillwatch.guard.app import create_app
    from stillwatch.guard.settings import GuardSettings

    db = f"sqlite:///{tmp_path_factory.mktemp('sim') / 'audit.db'}"
    settings = GuardSettings(db_url=db, admin_key=ADMIN, trusted_proxies=["127.0.0.1"])  # the simulator's X-Forwarded-For
    with ServerThread(create_app(settings, backend=StubBackend())) as server:
        config = SimulationConfig(endpoint=server.base_url, seed=0, duration=8.0, concurrency=8, max_requests=500,
                                  honest={"chat": 6, "app": 1}, attackers={"bulk": 1}, campaign_accounts=0)
        outcome = simulate(config, ADMIN)
    return db, outcome


def test_simulator_refuses_anything_but_loopback():
    for url in ("http://10.0.0.1:8000/v1", "http://localhost:8000/v1", "https://example.com/v1"):
        with pytest.raises(ConfigError, match="127.0.0.1"):
            SimulationConfig(endpoint=url)


def test_simulator_is_seeded_and_gives_every_client_its_own_address():
    a = clients(SimulationConfig(endpoint="http://127.0.0.1:1/v1", seed=3, campaign_accounts=5))
    b = clients(SimulationConfig(endpoint="http://127.0.0.1:1/v1", seed=3, campaign_accounts=5))
    assert [(c.account, c.addr, len(c.plan)) for c in a] == [(c.account, c.addr, len(c.plan)) for c in b]
    assert len({c.addr for c in a}) == len(a)
    assert parse_counts("chat=2, bulk") == {"chat": 2, "bulk": 1}
    with pytest.raises(ConfigError, match="unknown profile"):
        parse_counts("wizard=1")


def test_traffic_reaches_the_gateway_and_its_audit_log(gateway_db):
    _, outcome = gateway_db
    assert outcome["totals"]["ok"] > 100 and outcome["totals"]["sent"] <= 500 and outcome["totals"]["errors"] == 0
    assert {a["profile"] for a in outcome["accounts"]} == {"chat", "app", "bulk"}


def test_detect_over_the_audit_log_stops_the_harvester_not_the_app(gateway_db, tmp_path):
    from stillwatch.cli.detect import detect_database, register

    db, _ = gateway_db
    report = detect_database(db)
    by = {a["account"]: a for a in report["accounts"]}
    assert by["sim-bulk-0"]["action"] in ("hide_reasoning", "degrade", "block"), by["sim-bulk-0"]["reasons"]
    assert by["sim-app-0"]["action"] == "allow" and by["sim-app-0"]["requests"] >= 20  # judged, not too few
    assert all(a["action"] == "allow" for name, a in by.items() if "-chat-" in name)

    app = typer.Typer()
    register(app)
    out = tmp_path / "verdicts.json"
    result = CliRunner().invoke(app, ["detect", "--db", db, "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "sim-bulk-0" in result.output and "coverage" in result.output
    assert json.loads(out.read_text())["policy"] == "builtin-1"
