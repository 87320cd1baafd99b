"""The operator's view: one JSON line per request (request id, account, key id, route, status, latency,
decision; never a key, prompts only when asked) and the metrics an operator pages on (time to first token,
audit-commit latency, queue depths, detector actions)."""

from __future__ import annotations

import io
import json
import logging
import re

import httpx
import pytest

import upstream_stub as stub
from gateway_helpers import ServerThread
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.actions import ActionLog
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.logs import REQUESTS_LOGGER, JSONFormatter
from stillwatch.guard.settings import GuardSettings

CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "secret plan " + "x" * 400}]}


@pytest.fixture
def gateway(tmp_path):
    from stillwatch.guard.app import create_app

    def start(**settings):
        db = f"sqlite:///{tmp_path / 'guard.db'}"
        engine = make_engine(db)
        upgrade(engine)
        key = AccountStore(engine).create_key("ops")[1]
        upstream = stub.StubUpstream().__enter__()
        server = ServerThread(create_app(GuardSettings(upstream=upstream.base_url, db_url=db, **settings)))
        server.__enter__()
        started.append((server, upstream, engine))
        return server, key, engine

    started: list = []
    yield start
    for server, upstream, engine in started:
        server.__exit__()
        upstream.__exit__()
        engine.dispose()


@pytest.fixture
def request_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger(REQUESTS_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_one_json_line_per_request_without_keys_or_prompts(gateway, request_lines):
    server, key, _ = gateway(log_format="json", detection=False)
    ok = httpx.post(server.base + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    wrong = key[:-4] + "AAAA"
    denied = httpx.post(server.base + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {wrong}"})
    assert (ok.status_code, denied.status_code) == (200, 401)
    lines = request_lines()
    assert len(lines) == 2
    first, second = lines
    assert first["request_id"] == ok.headers["x-request-id"]
    assert (first["account"], first["key_id"], first["route"], first["status"], first["decision"]) == \
        ("ops", key.split("-")[1], "/v1/chat/completions", 200, "allow")
    assert first["latency_ms"] > 0 and first["event"] == "request" and first["level"] == "info"
    assert (second["status"], second["decision"], second["account"]) == (401, "deny", None)
    text = json.dumps(lines)
    assert key not in text and wrong not in text and "secret plan" not in text and "prompt" not in first


def test_prompts_are_logged_only_when_asked_and_cut(gateway, request_lines):
    server, key, _ = gateway(log_format="json", log_prompts=True, detection=False)
    httpx.post(server.base + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    (line,) = request_lines()
    assert "secret plan" in line["prompt"] and len(line["prompt"]) == 200


def test_text_logs_write_no_request_lines(gateway, request_lines):
    server, key, _ = gateway(detection=False)
    httpx.post(server.base + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    assert request_lines() == []


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    assert match, f"{name}{{{want}}} not in /metrics"
    return float(match.group(1))


def test_metrics_show_first_token_audit_commits_queues_and_detector_actions(gateway):
    server, key, engine = gateway()
    auth = {"Authorization": f"Bearer {key}"}
    httpx.post(server.base + "/chat/completions", json={**CHAT, "stream": True}, headers=auth)
    httpx.post(server.base + "/chat/completions", json=CHAT, headers=auth)
    account_id = AccountStore(engine).get_account("ops")["id"]
    ActionLog(engine).record(account_id, "throttle", "throttle", "detector", {"signals": {}})
    text = httpx.get(server.url + "/metrics").text
    assert _sample(text, "stillwatch_time_to_first_token_seconds_count", route="/v1/chat/completions") == 2
    assert _sample(text, "stillwatch_audit_commit_seconds_count") >= 2
    assert _sample(text, "stillwatch_queue_depth", queue="audit") == 0
    assert _sample(text, "stillwatch_detector_actions_total", action="throttle") == 1
