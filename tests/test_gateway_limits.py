"""Requests the local model cannot serve are 400s, the API description is not public, account names are
unambiguous, and a blocked account is throttled like any other."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway_helpers import ServerThread
from stillwatch.guard.accounts import AccountStore, BadAccountName
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.audit import query as audit_query
from stillwatch.guard.settings import GuardSettings

ADMIN = "admin-key-for-the-limits-test"


@pytest.fixture(scope="module")
def gw(untrained_tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("limits")
    db = f"sqlite:///{root / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    store = AccountStore(engine)
    keys = {name: store.create_key(name)[1] for name in ("alice", "blocked")}
    store.block("blocked", "distilling")
    (root / "quotas.toml").write_text('[default]\nrequests = "1000/minute"\n\n[accounts.blocked]\n'
                                      'requests = "2/hour"\n')
    from stillwatch.guard.app import create_app

    settings = GuardSettings(teacher=untrained_tiny, db_url=db, quotas_file=root / "quotas.toml", admin_key=ADMIN)
    with ServerThread(create_app(settings)) as server:
        yield {"base": server.url, "keys": keys, "store": store, "engine": engine}
    engine.dispose()


def _post(gw, path: str, body: dict, who: str = "alice", client: httpx.Client | None = None) -> httpx.Response:  # type: ignore[no-untyped-def]
    return (client or httpx).post(gw["base"] + path, json=body, timeout=60,
                                  headers={"Authorization": f"Bearer {gw['keys'][who]}"})


def test_greedy_with_several_choices_is_a_400_and_keeps_the_connection(gw) -> None:
    with httpx.Client() as client:
        chat = _post(gw, "/v1/chat/completions", {"model": "stillwatch", "n": 2, "temperature": 0, "max_tokens": 4,
                                                  "messages": [{"role": "user", "content": "add: 1+2\n"}]},
                     client=client)
        assert chat.status_code == 400 and chat.json()["error"]["param"] == "n"
        text = _post(gw, "/v1/completions", {"model": "stillwatch", "n": 2, "temperature": 0, "max_tokens": 4,
                                             "prompt": "add: 1+2\n"}, client=client)
        assert text.status_code == 400 and text.json()["error"]["param"] == "n"
        ok = _post(gw, "/v1/chat/completions", {"model": "stillwatch", "n": 2, "temperature": 1, "max_tokens": 4,
                                                "messages": [{"role": "user", "content": "add: 1+2\n"}]},
                   client=client)
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 2


def test_the_api_description_is_not_public(gw) -> None:
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(gw["base"] + path).status_code == 404


def test_account_names_are_ascii_and_end_where_they_seem_to(gw) -> None:
    store: AccountStore = gw["store"]
    for name in ("alice\n", "\u0430lice", "alice\u200b", "al ice", "", "x" * 201):
        with pytest.raises(BadAccountName):
            store.create_account(name)
    store.create_account("bob.smith@example.com")


def test_a_blocked_account_is_throttled_before_it_is_refused(gw) -> None:
    codes = [httpx.get(gw["base"] + "/v1/models", headers={"Authorization": f"Bearer {gw['keys']['blocked']}"},
                        timeout=30).status_code for _ in range(4)]
    assert codes[0] == 403 and 429 in codes  # counted like any account, refused once over its quota


def test_admin_actions_are_audited_and_wrong_admin_keys_limited(gw, caplog: pytest.LogCaptureFixture) -> None:
    base = gw["base"]
    r = httpx.post(base + "/admin/accounts", json={"name": "carol"}, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 201
    r = httpx.post(base + "/admin/accounts/carol/block", json={"reason": "test"},
                   headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200
    codes = [httpx.post(base + "/admin/accounts/carol/unblock", headers={"Authorization": "Bearer guess"}).status_code
             for _ in range(12)]
    assert codes[0] == 401 and codes[-1] == 429
    assert "wrong admin key" in caplog.text
    trail = [(r["endpoint"], r["status"], r["decision"]) for r in audit_query(gw["engine"], limit=50)]
    assert ("/admin/accounts/carol/block", 200, "admin") in trail and ("/admin/accounts", 201, "admin") in trail
    assert ("/admin/accounts/carol/unblock", 401, "admin") in trail
    assert gw["store"].get_account("carol")["blocked"]


def test_a_refused_key_is_audited_up_to_its_budget_then_only_counted(tmp_path):
    import openai

    from detect_support import StubBackend

    from stillwatch.guard.app import create_app

    db = f"sqlite:///{tmp_path / 'g.db'}"
    engine = make_engine(db)
    upgrade(engine)
    store = AccountStore(engine)
    key = store.create_key("hammer")[1]
    store.block("hammer", "harvesting")
    settings = GuardSettings(db_url=db, refusals_audited_per_minute=5, detection=False)
    app = create_app(settings, backend=StubBackend())
    with ServerThread(app) as server:
        client = openai.OpenAI(api_key=key, base_url=server.base_url, max_retries=0)
        for _ in range(12):
            with pytest.raises(openai.PermissionDeniedError):
                client.completions.create(model="stub", prompt="x" * 1000, max_tokens=4)
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert store.usage("hammer")["requests"] == 5
    assert "stillwatch_refusals_unaudited_total 7.0" in metrics
