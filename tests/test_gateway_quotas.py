"""Quotas that clients see and operators change at runtime: OpenAI's x-ratelimit-* headers, limits stored in
the database and changed through the admin API or `stillwatch quotas set` (per account, per key), applied on
the next request by every replica, seeded from the quotas file, and lowered by a detector's throttle."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager

import httpx
import pytest
from limits import parse_many
from sqlalchemy import update

import upstream_stub as stub
from gateway_helpers import ServerThread
from guard_support import fresh_postgres, require_redis, run_cli
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.quotas import QuotaStore, throttled
from stillwatch.guard.settings import GuardSettings
from stillwatch.guard.tables import Account

ADMIN = "admin-" + "q" * 40
CHAT = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def replicas(db: str, n: int = 2, **settings):
    """`n` gateways on one database, each in front of the stub upstream."""
    from stillwatch.guard.app import create_app

    with ExitStack() as stack:
        upstream = stack.enter_context(stub.StubUpstream())
        yield [stack.enter_context(ServerThread(create_app(GuardSettings(
            upstream=upstream.base_url, db_url=db, admin_key=ADMIN, detection=False, **settings))))
               for _ in range(n)]


def _chat(server, key: str) -> httpx.Response:
    return httpx.post(server.base + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"},
                      timeout=30)


def _admin(server, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + "/admin" + path, headers={"Authorization": f"Bearer {ADMIN}"},
                         timeout=30, **kwargs)


@pytest.fixture
def sqlite_db(tmp_path):
    db = f"sqlite:///{tmp_path / 'guard.db'}"
    engine = make_engine(db)
    upgrade(engine)
    store = AccountStore(engine)
    keys = {name: store.create_key(name)[1] for name in ("alice", "alice", "bob")}
    keys["alice2"] = store.create_key("alice")[1]
    yield db, engine, keys
    engine.dispose()


def test_answers_carry_openais_rate_limit_headers(sqlite_db):
    db, engine, keys = sqlite_db
    QuotaStore(engine).set("default", requests="5/minute", tokens="1000/minute")
    with replicas(db, 1) as (gw,):
        first, second = _chat(gw, keys["alice"]), _chat(gw, keys["alice"])
    assert first.status_code == second.status_code == 200
    h = first.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("5", "4")
    assert second.headers["x-ratelimit-remaining-requests"] == "3"
    assert h["x-ratelimit-limit-tokens"] == "1000" and h["x-ratelimit-remaining-tokens"] == "1000"
    # The stub's reply cost 40 tokens, charged after the first answer.
    assert second.headers["x-ratelimit-remaining-tokens"] == "960"
    assert h["x-ratelimit-reset-requests"].endswith("s") and h["x-ratelimit-reset-tokens"].endswith("s")


def test_a_change_through_one_replica_holds_on_the_next_request_of_the_other(sqlite_db, capsys):
    db, engine, keys = sqlite_db
    with replicas(db, 2) as (a, b):
        r = _admin(a, "PUT", "/quotas/accounts/alice", json={"requests": "2/minute"})
        assert r.status_code == 200 and r.json()["effective"]["requests"] == "2/minute"
        assert [_chat(b, keys["alice"]).status_code for _ in range(3)] == [200, 200, 429]
        assert _chat(b, keys["bob"]).status_code == 200  # another account keeps the default
        # The CLI writes the same rows: raised again, no restart.
        assert run_cli(capsys, "quotas", "set", "--account", "alice", "--requests", "100/minute", "--db", db)[0] == 0
        assert _chat(b, keys["alice"]).headers["x-ratelimit-limit-requests"] == "100"
        # A key's own limit, beside its account's.
        key_id = keys["alice2"].split("-")[1]
        r = _admin(a, "PUT", f"/quotas/keys/{key_id}", json={"requests": "1/minute"})
        assert r.status_code == 200 and r.json()["effective"]["requests"] == "1/minute"
        assert [_chat(b, keys["alice2"]).status_code for _ in range(2)] == [200, 429]
        assert _chat(b, keys["alice"]).status_code == 200
        # Bad values and unknown scopes are 400 and 404, and change nothing.
        assert _admin(a, "PUT", "/quotas/accounts/alice", json={"requests": "2/fortnight"}).status_code == 400
        assert _admin(a, "PUT", "/quotas/accounts/nobody", json={"requests": "2/minute"}).status_code == 404
        assert _admin(a, "GET", "/quotas").json()["data"][0]["scope"] in ("account", "key")
        assert _admin(a, "DELETE", f"/quotas/keys/{key_id}").json()["stored"] is None
    code, out, _ = run_cli(capsys, "quotas", "show", "--account", "alice", "--json", "--db", db)
    assert code == 0 and '"requests": "100/minute"' in out
    code, _, err = run_cli(capsys, "quotas", "set", "--account", "alice", "--requests", "1/eon", "--db", db)
    assert code == 2 and "cannot parse" in err


def test_a_throttled_account_gets_the_lower_of_its_quota_and_the_throttle(sqlite_db):
    db, engine, keys = sqlite_db
    per_minute = parse_many("600/minute")
    assert [str(i) for i in throttled(per_minute, 3)] == ["3 per 1 minute"]
    assert [str(i) for i in throttled(parse_many("2/minute"), 3)] == ["2 per 1 minute"]
    assert [str(i) for i in throttled(parse_many("10/second"), 3)] == ["10 per 1 second", "3 per 1 minute"]
    assert throttled(per_minute, None) == per_minute
    with engine.begin() as conn:
        conn.execute(update(Account).where(Account.name == "alice").values(throttle_rpm=2))
    with replicas(db, 1) as (gw,):
        replies = [_chat(gw, keys["alice"]) for _ in range(3)]
        assert [r.status_code for r in replies] == [200, 200, 429]
        assert replies[0].headers["x-ratelimit-limit-requests"] == "2"
        assert _chat(gw, keys["bob"]).headers["x-ratelimit-limit-requests"] == "600"
        with engine.begin() as conn:  # the throttle lifted: the quota again, on the next request
            conn.execute(update(Account).where(Account.name == "alice").values(throttle_rpm=None))
        assert _chat(gw, keys["alice"]).headers["x-ratelimit-limit-requests"] == "600"


def test_the_quotas_file_seeds_the_database_and_runtime_changes_outlive_it(sqlite_db, tmp_path):
    db, engine, keys = sqlite_db
    quotas_file = tmp_path / "quotas.toml"
    quotas_file.write_text('[default]\nrequests = "50/minute"\n[accounts.alice]\nrequests = "7/minute"\n')
    with replicas(db, 1, quotas_file=quotas_file) as (gw,):
        assert _chat(gw, keys["alice"]).headers["x-ratelimit-limit-requests"] == "7"
        assert _chat(gw, keys["bob"]).headers["x-ratelimit-limit-requests"] == "50"
        _admin(gw, "PUT", "/quotas/accounts/alice", json={"requests": "9/minute"})
    with replicas(db, 1, quotas_file=quotas_file) as (gw,):  # a restart with the same file keeps the change
        assert _chat(gw, keys["alice"]).headers["x-ratelimit-limit-requests"] == "9"


def test_postgres_and_redis_replicas_share_limits_and_counters():
    redis_url = require_redis()
    with fresh_postgres() as db:
        engine = make_engine(db)
        upgrade(engine)
        key = AccountStore(engine).create_key("carol")[1]
        prefix = f"{redis_url}?prefix=quota-test-{id(engine)}"
        with replicas(db, 2, rate_limit_storage=prefix) as (a, b):
            assert _admin(a, "PUT", "/quotas/accounts/carol", json={"requests": "3/minute"}).status_code == 200
            codes = [_chat(server, key).status_code for server in (a, b, a, b)]
            assert codes == [200, 200, 200, 429]
        engine.dispose()
