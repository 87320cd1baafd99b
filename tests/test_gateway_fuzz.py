"""A bounded schemathesis run against the gateway's own OpenAPI document: whatever arrives, never a 5xx."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from gateway_helpers import ServerThread
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.settings import GuardSettings

schemathesis = pytest.importorskip("schemathesis")

ADMIN = "fuzz-admin-key"
EXAMPLES = 12  # per operation and mode: about 20 s for the whole document on 2 cores


def test_no_server_errors_under_fuzzing(tiny_teacher, tmp_path):
    from schemathesis import GenerationMode

    from stillwatch.guard.app import create_app

    db = f"sqlite:///{tmp_path / 'fuzz.db'}"
    engine = make_engine(db)
    upgrade(engine)
    key = AccountStore(engine).create_key("fuzzer")[1]
    # Small limits keep each generation short, so the budget goes to breadth.
    app = create_app(GuardSettings(teacher=tiny_teacher, db_url=db, admin_key=ADMIN, max_tokens_limit=8, max_n=2,
                                   max_body_bytes=50_000, batch_wait_ms=1))
    schema = schemathesis.openapi.from_dict(app.openapi())
    failures: list[tuple[str, int, str]] = []
    seen: dict[tuple[str, int], int] = {}
    counter = [0]
    with ServerThread(app) as server:
        for result in schema.get_all_operations():
            op = result.ok()
            auth = {"Authorization": f"Bearer {ADMIN if op.path.startswith('/admin') else key}"}
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(generation_mode=mode))
                def run(case) -> None:
                    # Every other valid body names the served model, so it reaches the backend, not a 404.
                    counter[0] += 1
                    if mode is GenerationMode.POSITIVE and isinstance(case.body, dict) and "model" in case.body \
                            and counter[0] % 2:
                        case.body["model"] = "stillwatch"
                    response = case.call(base_url=server.url, headers=auth, timeout=60)
                    where = (op.path, response.status_code)
                    seen[where] = seen.get(where, 0) + 1
                    if response.status_code >= 500:
                        failures.append((op.label, response.status_code, repr(case.body)[:300]))

                try:
                    run()
                except Unsatisfiable:  # e.g. no invalid input exists for a parameterless GET
                    pass
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
    engine.dispose()
    print(sorted(seen.items()))
    assert not failures, failures[:5]
    # The run reached the model and was refused for bad input, on both generation endpoints.
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert seen.get((path, 200), 0) > 0 and seen.get((path, 400), 0) > 0, seen
