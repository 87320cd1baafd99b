"""The admin API's quota routes (mounted under /admin by `admin_router`): read and change the limits of the
default, an account or a key at runtime. Changes are rows in the database, so they hold on the next request
on every replica; the response shows the row and the limits now in force."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.quotas import QuotaStore


class QuotaChange(BaseModel):
    """Limits to set, each in the `limits` notation ("600/minute", "10/second;1000/day", "unlimited");
    a field left out keeps its value."""

    model_config = ConfigDict(extra="forbid")

    requests: str | None = Field(None, max_length=200)
    tokens: str | None = Field(None, max_length=200)
    key_requests: str | None = Field(None, max_length=200)
    key_tokens: str | None = Field(None, max_length=200)


def key_account(store: AccountStore, key_id: str) -> str:
    """The account name that owns `key_id` (UnknownKey if there is none)."""
    from sqlalchemy import select

    from stillwatch.guard.accounts import UnknownKey
    from stillwatch.guard.tables import Account, ApiKey

    with store.engine.connect() as conn:
        name = conn.scalar(select(Account.name).join(ApiKey, ApiKey.account_id == Account.id)
                           .where(ApiKey.id == key_id))
    if name is None:
        raise UnknownKey(f"no key with id {key_id[:40]!r}")
    return name


def quota_view(quotas: QuotaStore, store: AccountStore, scope: str, subject: str = "") -> dict[str, Any]:
    """One scope's stored row and the limits in force there."""
    if scope == "account":
        store.get_account(subject)  # UnknownAccount (404) for a name that is not an account
        effective = quotas.resolve(subject)
    elif scope == "key":
        effective = quotas.resolve(key_account(store, subject), subject)
        effective = {"requests": effective["key_requests"], "tokens": effective["key_tokens"]}
    else:
        effective = quotas.resolve("")
    return {"scope": scope, "subject": subject, "stored": quotas.get(scope, subject), "effective": effective}


def add_quota_routes(router: APIRouter, store: AccountStore) -> None:
    """Add GET/PUT/DELETE /quotas/default, /quotas/accounts/{name} and /quotas/keys/{key_id}, and GET /quotas."""
    quotas = QuotaStore(store.engine)

    @router.get("/quotas")
    def list_quotas() -> dict[str, Any]:
        """Every stored quota row, and the default limits in force."""
        return {"object": "list", "data": quotas.rows(), "default": quotas.resolve("")}

    def routes(path: str, scope: str) -> None:
        def subject_of(subject: str) -> str:
            if scope == "key":
                key_account(store, subject)
            elif scope == "account":
                store.get_account(subject)
            return subject

        @router.get(path, name=f"get_{scope}_quota")
        def get(subject: str = "") -> dict[str, Any]:
            return quota_view(quotas, store, scope, subject)

        @router.put(path, name=f"set_{scope}_quota")
        def put(body: QuotaChange, subject: str = "") -> dict[str, Any]:
            quotas.set(scope, subject_of(subject) if subject else "", **body.model_dump())
            return quota_view(quotas, store, scope, subject)

        @router.delete(path, name=f"clear_{scope}_quota")
        def clear(subject: str = "") -> dict[str, Any]:
            quotas.clear(scope, subject_of(subject) if subject else "")
            return quota_view(quotas, store, scope, subject)

    routes("/quotas/default", "default")
    routes("/quotas/accounts/{subject}", "account")
    routes("/quotas/keys/{subject}", "key")
