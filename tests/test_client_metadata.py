"""Client metadata in the audit log: the address (X-Forwarded-For only from a trusted proxy) and User-Agent."""

from __future__ import annotations

import httpx
import pytest

from stillwatch.guard.clients import client_address, user_agent
from stillwatch.guard.settings import GuardSettings


def test_forwarded_for_is_ignored_unless_the_peer_is_trusted():
    assert client_address("127.0.0.1", "10.1.2.3", ()) == "127.0.0.1"
    assert client_address("192.0.2.9", "10.1.2.3", ("127.0.0.1/32",)) == "192.0.2.9"
    assert client_address("127.0.0.1", "10.1.2.3", ("127.0.0.1/32",)) == "10.1.2.3"
    # The client wrote the left hops itself; the nearest untrusted hop is the one a proxy saw.
    assert client_address("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.1", ("10.0.0.0/8",)) == "198.51.100.7"
    assert client_address("127.0.0.1", None, ("127.0.0.1/32",)) == "127.0.0.1"
    assert client_address(None, "10.1.2.3", ()) is None
    assert len(client_address("127.0.0.1", "x" * 500, ("127.0.0.1/32",)) or "") <= 64


def test_user_agent_is_cut_and_printable():
    assert user_agent("a\x1b[31mb" + "c" * 500) == "a?[31mb" + "c" * 193
    assert user_agent("") is None


def test_trusted_proxies_setting(monkeypatch):
    assert GuardSettings().trusted_proxies == []
    monkeypatch.setenv("STILLWATCH_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")
    assert GuardSettings().trusted_proxies == ["127.0.0.1/32", "10.0.0.0/8"]
    monkeypatch.delenv("STILLWATCH_TRUSTED_PROXIES")
    with pytest.raises(ValueError, match="not an IP address"):
        GuardSettings(trusted_proxies=["proxy.example"])


@pytest.mark.parametrize("trusted, expected", [([], "127.0.0.1"), (["127.0.0.1"], "203.0.113.5")])
def test_the_audit_log_records_the_client(tmp_path, trusted, expected):
    from detect_support import StubBackend
    from gateway_helpers import ServerThread

    from stillwatch.detect.events import Event
    from stillwatch.guard.accounts import AccountStore
    from stillwatch.guard.app import create_app
    from stillwatch.guard.audit import iter_served
    from stillwatch.guard.db import make_engine, upgrade

    db = f"sqlite:///{tmp_path / 'meta.db'}"
    engine = make_engine(db)
    upgrade(engine)
    _, key = AccountStore(engine).create_key("alice")
    settings = GuardSettings(db_url=db, trusted_proxies=trusted, detection=False)
    with ServerThread(create_app(settings, backend=StubBackend())) as server:
        r = httpx.post(f"{server.base_url}/chat/completions", timeout=30, headers={
            "Authorization": f"Bearer {key}", "X-Forwarded-For": "203.0.113.5", "User-Agent": "agent/" + "z" * 300},
            json={"model": "stub", "messages": [{"role": "user", "content": "add: 1+2"}]})
        assert r.status_code == 200, r.text
    rows = list(iter_served(engine))
    assert len(rows) == 1 and rows[0]["client_addr"] == expected
    assert rows[0]["user_agent"].startswith("agent/zzz") and len(rows[0]["user_agent"]) == 200
    event = Event.from_row(rows[0])
    assert (event.client_addr, event.user_agent) == (expected, rows[0]["user_agent"])
