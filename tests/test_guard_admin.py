"""The /admin router: its own key, accounts, keys, block/degrade, usage, audit; errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.admin import admin_router
from stillwatch.guard.audit import AuditEntry, AuditLog
from stillwatch.guard.db import make_engine, upgrade
from stillwatch.guard.settings import GuardSettings

ADMIN = "admin-secret-for-tests"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _client(tmp_path: Path, admin_key: str | None) -> tuple[TestClient, AccountStore, AuditLog]:
    engine = make_engine(f"sqlite:///{tmp_path / 'admin.db'}")
    upgrade(engine)
    store, audit = AccountStore(engine), AuditLog(engine, GuardSettings())
    app = FastAPI()
    app.include_router(admin_router(store, audit, GuardSettings(admin_key=admin_key)), prefix="/admin")
    return TestClient(app), store, audit


def _is_openai_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error


def test_admin_disabled_without_key(tmp_path: Path) -> None:
    client, _, _ = _client(tmp_path, None)
    _is_openai_error(client.get("/admin/accounts", headers=AUTH), 403, "admin_disabled")
    _is_openai_error(client.post("/admin/keys", json={"account": "x"}, headers=AUTH), 403, "admin_disabled")


def test_admin_key_required(tmp_path: Path) -> None:
    client, store, _ = _client(tmp_path, ADMIN)
    _, user_key = store.create_key("alice")
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN},
                    {"Authorization": f"Bearer {user_key}"}]:  # an API key is not an admin key
        _is_openai_error(client.get("/admin/accounts", headers=headers), 401, "invalid_admin_key")
        _is_openai_error(client.post("/admin/accounts/alice/block", json={"reason": "x"}, headers=headers), 401)
    assert not store.get_account("alice")["blocked"]


def test_admin_operations(tmp_path: Path) -> None:
    client, store, audit = _client(tmp_path, ADMIN)
    created = client.post("/admin/accounts", json={"name": "acme"}, headers=AUTH)
    assert created.status_code == 201 and created.json()["name"] == "acme"
    _is_openai_error(client.post("/admin/accounts", json={"name": "acme"}, headers=AUTH), 409)
    error = _is_openai_error(client.post("/admin/accounts", json={"name": "x", "extra": 1}, headers=AUTH), 400)
    assert error["param"] == "extra"
    _is_openai_error(client.post("/admin/accounts", content=b"{not json", headers={**AUTH, "Content-Type":
                                                                                    "application/json"}), 400)
    _is_openai_error(client.post("/admin/accounts", json={"name": "two words"}, headers=AUTH), 400)

    key = client.post("/admin/accounts/acme/keys", headers=AUTH).json()
    assert key["key"].startswith("sw-") and store.authenticate(key["key"]).account_name == "acme"
    other = client.post("/admin/keys", json={"account": "newco"}, headers=AUTH).json()  # creates the account
    listed = client.get("/admin/keys", headers=AUTH).json()["data"]
    assert {k["key_id"] for k in listed} == {key["key_id"], other["key_id"]}
    assert key["key"] not in client.get("/admin/keys", headers=AUTH).text  # shown once only
    assert [k["key_id"] for k in client.get("/admin/accounts/acme/keys", headers=AUTH).json()["data"]] == [
        key["key_id"]]

    blocked = client.post("/admin/accounts/acme/block", json={"reason": "harvesting"}, headers=AUTH).json()
    assert blocked["blocked"] and blocked["block_reason"] == "harvesting"
    principal = store.authenticate(key["key"])
    assert principal.blocked and principal.block_reason == "harvesting"
    client.post("/admin/accounts/acme/unblock", headers=AUTH)
    assert not store.authenticate(key["key"]).blocked
    assert client.post("/admin/accounts/acme/degrade", headers=AUTH).json()["degraded"]
    assert store.authenticate(key["key"]).degraded
    assert not client.post("/admin/accounts/acme/undegrade", headers=AUTH).json()["degraded"]
    _is_openai_error(client.post("/admin/accounts/nobody/block", json={"reason": "x"}, headers=AUTH), 404)

    assert client.delete(f"/admin/keys/{other['key_id']}", headers=AUTH).json()["revoked"]
    _is_openai_error(client.delete("/admin/keys/ffffffffffff", headers=AUTH), 404)

    async def record() -> None:
        async with audit:
            await audit.record(AuditEntry(account_id=principal.account_id, key_id=principal.key_id,
                                          endpoint="/v1/chat/completions", prompt="hi", completion="hello",
                                          prompt_tokens=2, completion_tokens=1, status=200))

    asyncio.run(record())
    usage = client.get("/admin/accounts/acme/usage", headers=AUTH).json()
    assert usage["requests"] == 1 and usage["total_tokens"] == 3
    records = client.get("/admin/audit", params={"account": "acme"}, headers=AUTH).json()["data"]
    assert len(records) == 1 and records[0]["prompt"] == "hi" and records[0]["key_id"] == key["key_id"]
    assert key["key"] not in str(records)
    assert client.get("/admin/audit", params={"since": "2999-01-01T00:00:00"}, headers=AUTH).json()["data"] == []
    assert _is_openai_error(client.get("/admin/audit", params={"limit": 0}, headers=AUTH), 400)["param"] == "limit"
    _is_openai_error(client.get("/admin/audit", params={"account": "nobody"}, headers=AUTH), 404)
    accounts = {a["name"]: a for a in client.get("/admin/accounts", headers=AUTH).json()["data"]}
    assert set(accounts) == {"acme", "newco"} and accounts["newco"]["active_keys"] == 0


@pytest.mark.parametrize("path", ["/admin/accounts/acme", "/admin/audit"])
def test_admin_get_routes_need_key_too(tmp_path: Path, path: str) -> None:
    client, _, _ = _client(tmp_path, ADMIN)
    _is_openai_error(client.get(path), 401)
