"""Accounts and API keys: create, revoke, block, degrade, hide reasoning, throttle; authenticate every request.

A key looks like `sw-<key_id>-<secret>`. The key id is public (it names the key in lists, logs and the audit
trail) and gives an indexed lookup; the secret is 256 random bits. Only SHA-256 of the whole key is stored
(a fast hash is enough for a high-entropy secret: there is nothing to guess), and it is compared with
`hmac.compare_digest`. An account's state (blocked, degraded, hidden, throttled) is read from the database on
every request, never cached, so a block made through one replica or the CLI holds on the very next request
everywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from stillwatch.errors import StillwatchError
from stillwatch.guard.db import write_transaction
from stillwatch.guard.tables import Account, ApiKey, AuditRecord, utcnow

KEY_PREFIX = "sw"
# ASCII only, and \Z rather than $ (which also matches before a final newline): "alice\n" or a Cyrillic
# "аlice" must never be a second account beside "alice".
_NAME_RE = re.compile(r"[A-Za-z0-9_.@+:-]{1,200}\Z", re.ASCII)
_KEY_RE = re.compile(r"^sw-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")


class InvalidKey(StillwatchError):
    """A missing, malformed, unknown or revoked API key (HTTP 401)."""


class UnknownAccount(StillwatchError):
    """No account by that name (HTTP 404)."""


class UnknownKey(StillwatchError):
    """No key with that id (HTTP 404)."""


class AccountExists(StillwatchError):
    """An account by that name exists already (HTTP 409)."""


class BadThrottle(StillwatchError):
    """A throttle that is not a positive whole number of requests per minute."""


class BadAccountName(StillwatchError):
    """An account name outside letters, digits and `.@+:-_`, or longer than 200 characters (HTTP 400)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account and key behind a valid API key, with the account's state right now."""

    account_id: int
    account_name: str
    key_id: str
    blocked: bool
    block_reason: str | None
    degraded: bool
    hide_reasoning: bool = False
    throttle_rpm: int | None = None


def hash_key(raw_key: str) -> str:
    """SHA-256 (hex) of a raw key: the only form in which a key is stored."""
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh (key_id, raw_key) pair: 48 public bits of id, 256 secret bits."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"


def key_id_of(raw_key: str) -> str | None:
    """The public key id inside a well-formed raw key, else None (never raises, never echoes the key)."""
    match = _KEY_RE.match(raw_key or "")
    return match.group(1) if match else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BadAccountName(f"bad account name {name[:50]!r}: use 1-200 letters, digits or .@+:-_")
    return name


# Built once: on every request, building the statement cost three times what running it does.
_AUTHENTICATE = (select(ApiKey.key_hash, ApiKey.revoked_at, Account.id, Account.name, Account.blocked,
                        Account.block_reason, Account.degraded, Account.hide_reasoning, Account.throttle_rpm)
                 .join(Account, Account.id == ApiKey.account_id).where(ApiKey.id == bindparam("key_id")))


class AccountStore:
    """Accounts and keys in the guard's database (see db.py); every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- accounts -------------------------------------------------------------------------------------
    def create_account(self, name: str) -> dict[str, Any]:
        """Create an account; AccountExists if the name is taken."""
        _check_name(name)
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(insert(Account).values(name=name, blocked=False, degraded=False, created_at=utcnow()))
        except IntegrityError:
            raise AccountExists(f"account {name!r} exists already") from None
        return self.get_account(name)

    def get_account(self, name: str) -> dict[str, Any]:
        """One account as a dict; UnknownAccount if there is none."""
        rows = self._accounts(name)
        if not rows:
            raise UnknownAccount(f"no account named {name[:200]!r}")
        return rows[0]

    def list_accounts(self) -> list[dict[str, Any]]:
        """Every account, oldest first, with its number of active keys."""
        return self._accounts(None)

    def _accounts(self, name: str | None) -> list[dict[str, Any]]:
        active = (select(func.count()).select_from(ApiKey)
                  .where(ApiKey.account_id == Account.id, ApiKey.revoked_at.is_(None)).scalar_subquery())
        stmt = select(Account, active.label("active_keys")).order_by(Account.id)
        if name is not None:
            if not _NAME_RE.match(name):  # no such account can exist (and PostgreSQL refuses NUL in text)
                return []
            stmt = stmt.where(Account.name == name)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [{"id": r.id, "name": r.name, "blocked": r.blocked, "block_reason": r.block_reason,
                 "blocked_at": _iso(r.blocked_at), "degraded": r.degraded, "hide_reasoning": r.hide_reasoning,
                 "throttle_rpm": r.throttle_rpm, "created_at": _iso(r.created_at),
                 "active_keys": r.active_keys} for r in rows]

    def block(self, name: str, reason: str) -> dict[str, Any]:
        """Block an account: all its keys are refused (403) from the next request on, on every replica."""
        reason = reason.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")  # PostgreSQL text
        self._set(name, blocked=True, block_reason=reason, blocked_at=utcnow())
        return self.get_account(name)

    def unblock(self, name: str) -> dict[str, Any]:
        """Lift a block."""
        self._set(name, blocked=False, block_reason=None, blocked_at=None)
        return self.get_account(name)

    def set_degraded(self, name: str, on: bool) -> dict[str, Any]:
        """Switch antidistillation sampling on or off for one account (the "degrade" action)."""
        self._set(name, degraded=bool(on))
        return self.get_account(name)

    def set_hide_reasoning(self, name: str, on: bool) -> dict[str, Any]:
        """Serve one account final answers without their reasoning traces (the "hide_reasoning" action)."""
        self._set(name, hide_reasoning=bool(on))
        return self.get_account(name)

    def set_throttle(self, name: str, rpm: int | None) -> dict[str, Any]:
        """Cap one account at `rpm` requests per minute below its quota (the "throttle" action); None lifts it."""
        if rpm is not None and (isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1):
            raise BadThrottle("a throttle is a whole number of requests per minute, at least 1")
        self._set(name, throttle_rpm=rpm)
        return self.get_account(name)

    def _set(self, name: str, **values: Any) -> None:
        if not _NAME_RE.match(name):
            raise UnknownAccount(f"no account named {name[:200]!r}")
        with write_transaction(self.engine) as conn:
            if conn.execute(update(Account).where(Account.name == name).values(**values)).rowcount != 1:
                raise UnknownAccount(f"no account named {name[:200]!r}")

    # --- keys -----------------------------------------------------------------------------------------
    def create_key(self, account_name: str) -> tuple[str, str]:
        """A new key for `account_name` (created if missing): (key_id, raw_key). The raw key is never stored."""
        return self.create_keys(account_name, 1)[0]

    def create_keys(self, account_name: str, count: int) -> list[tuple[str, str]]:
        """`count` new keys for `account_name` (created if missing) in one transaction: [(key_id, raw_key)]."""
        _check_name(account_name)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
            raise StillwatchError("the number of keys must be between 1 and 100000")
        made = [new_key() for _ in range(count)]
        while len({key_id for key_id, _ in made}) < count:  # 48-bit ids: a repeat within one batch is rare
            made = list({key_id: (key_id, raw) for key_id, raw in made}.values()) + [new_key()]
        with write_transaction(self.engine) as conn:
            # INSERT ... ON CONFLICT DO NOTHING, then read: two replicas creating the same new account at
            # once both end with its id, where select-then-insert let one of them fail on the unique name.
            dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            conn.execute(dialect_insert(Account).values(name=account_name, blocked=False, degraded=False,
                                                        created_at=utcnow())
                         .on_conflict_do_nothing(index_elements=[Account.name]))
            account_id = conn.scalar(select(Account.id).where(Account.name == account_name))
            now = utcnow()
            conn.execute(insert(ApiKey), [{"id": key_id, "account_id": account_id, "key_hash": hash_key(raw),
                                           "created_at": now} for key_id, raw in made])
        return made

    def revoke_key(self, key_id: str) -> None:
        """Revoke one key for good (idempotent); UnknownKey if there is no such key."""
        if not re.fullmatch(r"[0-9a-f]{12}", key_id or "", re.ASCII):
            raise UnknownKey(f"no key with id {key_id[:40]!r}")
        with write_transaction(self.engine) as conn:
            if conn.scalar(select(ApiKey.id).where(ApiKey.id == key_id)) is None:
                raise UnknownKey(f"no key with id {key_id[:40]!r}")
            conn.execute(update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                         .values(revoked_at=utcnow()))

    def list_keys(self, account_name: str | None = None) -> list[dict[str, Any]]:
        """Keys (ids and dates, never secrets or hashes), of one account or of all."""
        if account_name is not None:
            self.get_account(account_name)
        stmt = (select(ApiKey.id, Account.name, ApiKey.created_at, ApiKey.revoked_at)
                .join(Account, Account.id == ApiKey.account_id).order_by(ApiKey.created_at, ApiKey.id))
        if account_name is not None:
            stmt = stmt.where(Account.name == account_name)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [{"key_id": r.id, "account": r.name, "created_at": _iso(r.created_at),
                 "revoked_at": _iso(r.revoked_at), "active": r.revoked_at is None} for r in rows]

    # --- requests -------------------------------------------------------------------------------------
    def authenticate(self, raw_key: str | None) -> Principal:
        """The Principal behind a raw key, read fresh from the database; InvalidKey otherwise.

        A blocked account still authenticates (Principal.blocked): the caller answers 403, not 401.
        """
        key_id = key_id_of(raw_key or "")
        if key_id is None:
            raise InvalidKey("invalid API key")
        with self.engine.connect() as conn:
            row = conn.execute(_AUTHENTICATE, {"key_id": key_id}).first()
        if row is None or not hmac.compare_digest(row.key_hash, hash_key(raw_key or "")) or row.revoked_at:
            raise InvalidKey("invalid API key")
        return Principal(account_id=row.id, account_name=row.name, key_id=key_id, blocked=bool(row.blocked),
                         block_reason=row.block_reason, degraded=bool(row.degraded),
                         hide_reasoning=bool(row.hide_reasoning), throttle_rpm=row.throttle_rpm)

    def usage(self, name: str, since: datetime | None = None) -> dict[str, Any]:
        """Requests, tokens and refusals of one account from the audit log (all time, or since `since`)."""
        account = self.get_account(name)
        stmt = select(func.count(), func.coalesce(func.sum(AuditRecord.prompt_tokens), 0),
                      func.coalesce(func.sum(AuditRecord.completion_tokens), 0),
                      func.count().filter(AuditRecord.status >= 400),
                      func.min(AuditRecord.created_at), func.max(AuditRecord.created_at),
                      ).where(AuditRecord.account_id == account["id"])
        if since is not None:
            stmt = stmt.where(AuditRecord.created_at >= since)
        with self.engine.connect() as conn:
            requests, prompt_tokens, completion_tokens, refused, first, last = conn.execute(stmt).one()
        return {"account": name, "since": _iso(since), "requests": requests, "prompt_tokens": int(prompt_tokens),
                "completion_tokens": int(completion_tokens),
                "total_tokens": int(prompt_tokens) + int(completion_tokens), "refused": refused,
                "first_request": _iso(first), "last_request": _iso(last)}
