"""Quotas: requests and tokens per minute (or any window), per account and per key, on the `limits` library.

The limits live in the database (the `quotas` table: one row for the default, one per account, one per key
that has its own), read on every request, so a change made through the admin API or `stillwatch quotas set`
holds on the next request on every replica. The quotas file below seeds that table: at start-up each of its
tables that the database does not have yet is written there; later changes are the database's. Without a
database (`Quotas(storage)` in tests) the file's values are used as they are.

A key's own row (`stillwatch quotas set --key ID`) replaces its account's `key_requests` and `key_tokens`
for that key. An account the detector throttles (`accounts.throttle_rpm`) gets at most that many requests per
minute: its per-minute request limit is min(quota, throttle_rpm), and one is added where it has none.

Each answer says where the client stands, as OpenAI's headers: `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the same three for tokens, each for the
limit with the least room left.

The counters live in `memory://` for one replica or `redis://HOST:PORT` for several (they then count every
replica's traffic together). The strategy is `limits`' sliding-window counter: like GCRA it has no burst at
window edges, and it keeps two integers per limit whatever the cost of a hit (a moving window would store
one entry per token). Deployments that share one Redis add `?prefix=NAME` to its URI to keep their
counters apart.

The quotas file is TOML. Every value uses `limits`' notation ("600/minute", "100/second;5000/hour") or
"unlimited":

    [default]                     # every account
    requests = "600/minute"       # requests per account
    tokens = "200000/minute"      # prompt + completion tokens per account
    key_requests = "600/minute"   # requests per key (default: unlimited beyond the account's)
    key_tokens = "unlimited"      # tokens per key

    [accounts."acme-research"]    # per-account overrides; unset fields come from [default]
    requests = "60/minute"
    tokens = "20000/minute"
"""

from __future__ import annotations

import math
import re
import time
import tomllib
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from limits import RateLimitItem, RateLimitItemPerMinute, parse_many
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from sqlalchemy import Engine, and_, bindparam, delete, or_, select

from stillwatch.errors import ConfigError, StillwatchError

DEFAULT_REQUESTS = "600/minute"
DEFAULT_TOKENS = "200000/minute"


class QuotaExceeded(StillwatchError):
    """Over a quota (HTTP 429): retry after `retry_after` seconds, unless `should_retry` is False."""

    def __init__(self, retry_after: float, should_retry: bool = True, message: str = "") -> None:
        self.retry_after = max(0.0, float(retry_after))
        self.should_retry = should_retry
        super().__init__(message or f"quota exceeded: retry after {math.ceil(self.retry_after)} s")


@dataclass(frozen=True)
class QuotaPolicy:
    """The limits of one account (each a list: several windows may apply at once; empty = unlimited)."""

    requests: tuple[RateLimitItem, ...]
    tokens: tuple[RateLimitItem, ...]
    key_requests: tuple[RateLimitItem, ...] = ()
    key_tokens: tuple[RateLimitItem, ...] = ()


_FIELDS = {f.name for f in fields(QuotaPolicy)}


class BadQuota(ConfigError):
    """A limit that is not in the `limits` notation, or a scope that does not exist (HTTP 400)."""


@lru_cache(maxsize=4096)
def _parse_cached(value: str) -> tuple[RateLimitItem, ...]:
    if value.strip().lower() in ("unlimited", "none", ""):
        return ()
    return tuple(parse_many(value))


def _parse(value: Any, where: str) -> tuple[RateLimitItem, ...]:
    if not isinstance(value, str):
        raise BadQuota(f"{where}: expected a string like \"600/minute\" or \"unlimited\", got {value!r}")
    try:
        return _parse_cached(value)
    except ValueError:
        raise BadQuota(f"{where}: cannot parse {value!r} "
                       "(use e.g. \"600/minute\" or \"10/second;1000/day\")") from None


def _policy(table: Any, base: QuotaPolicy, where: str) -> QuotaPolicy:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of limits like [{where}] with requests = \"600/minute\", "
                          f"got {table!r}")
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    return replace(base, **{name: _parse(value, f"{where}.{name}") for name, value in table.items()})


def builtin_policy() -> QuotaPolicy:
    """The limits of an account that nothing else names."""
    return QuotaPolicy(requests=_parse(DEFAULT_REQUESTS, "default"), tokens=_parse(DEFAULT_TOKENS, "default"))


def load_quotas(path: Path | str | None) -> tuple[QuotaPolicy, dict[str, QuotaPolicy]]:
    """The default policy and the per-account overrides from a quotas TOML file (built-in defaults if None)."""
    default, tables = builtin_policy(), read_quota_tables(path)
    if "default" in tables:
        default = _policy(tables["default"], default, "default")
    overrides = {where[1]: _policy(table, default, f"accounts.{where[1]}") for where, table in tables.items()
                 if where != "default"}
    return default, overrides


def read_quota_tables(path: Path | str | None) -> dict[Any, dict[str, str]]:
    """The quotas file's tables as written: {"default": {...}, ("account", NAME): {...}}, each value checked."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"quotas file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"quotas file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"default", "accounts"}
    if unknown:
        raise ConfigError(f"quotas file {path}: unknown table(s) {sorted(unknown)}; use [default] and [accounts.NAME]")
    out: dict[Any, dict[str, str]] = {}
    if "default" in data:
        _policy(data["default"], builtin_policy(), "default")
        out["default"] = dict(data["default"])
    accounts = data.get("accounts", {})
    if not isinstance(accounts, dict):
        raise ConfigError(f"quotas file {path}: accounts must be tables like [accounts.NAME], got {accounts!r}")
    for name, table in accounts.items():
        _policy(table, builtin_policy(), f"accounts.{name}")
        out[("account", name)] = dict(table)
    return out


def throttled(items: tuple[RateLimitItem, ...], rpm: int | None) -> tuple[RateLimitItem, ...]:
    """Request limits under a throttle of `rpm` requests per minute: each per-minute limit becomes
    min(limit, rpm), and a per-minute limit of `rpm` is added where there is none."""
    if rpm is None:
        return items
    out, found = [], False
    for item in items:
        if item.GRANULARITY.name == "minute" and item.multiples == 1:
            out.append(item if item.amount <= rpm else RateLimitItemPerMinute(rpm))
            found = True
        else:
            out.append(item)
    if not found:
        out.append(RateLimitItemPerMinute(rpm))
    return tuple(out)


def _duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: "20ms", "1s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


SCOPES = ("default", "account", "key")
LIMIT_FIELDS = ("requests", "tokens", "key_requests", "key_tokens")  # the quotas table's column order
_KEY_ID = re.compile(r"[0-9a-f]{12}\Z")


class QuotaStore:
    """The quotas table: one row per scope, read on every request (a change holds at once everywhere)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lookup: Any = None

    @staticmethod
    def _check(scope: str, subject: str, limits: dict[str, str | None]) -> None:
        if scope not in SCOPES:
            raise BadQuota(f"unknown quota scope {scope!r}; use one of {', '.join(SCOPES)}")
        if scope == "key" and not _KEY_ID.match(subject):
            raise BadQuota(f"{subject[:40]!r} is not a key id (the 12 hex digits after 'sw-')")
        if scope == "key" and (limits.get("key_requests") is not None or limits.get("key_tokens") is not None):
            raise BadQuota("a key's own quota has requests and tokens; key_requests and key_tokens are an "
                           "account's limits for each of its keys")
        for name, value in limits.items():
            if name not in _FIELDS:
                raise BadQuota(f"unknown quota field {name!r}; known: {sorted(_FIELDS)}")
            if value is not None:
                _parse(value, name)

    def set(self, scope: str, subject: str = "", **limits: str | None) -> dict[str, Any]:
        """Set some limits of one scope (None leaves a limit as it is); the row afterwards."""
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        from stillwatch.guard.db import write_transaction
        from stillwatch.guard.tables import Quota, utcnow

        subject = "" if scope == "default" else subject
        given = {k: v for k, v in limits.items() if v is not None}
        self._check(scope, subject, given)
        with write_transaction(self.engine) as conn:
            dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = dialect_insert(Quota).values(scope=scope, subject=subject, updated_at=utcnow(), **given)
            conn.execute(stmt.on_conflict_do_update(index_elements=[Quota.scope, Quota.subject],
                                                    set_={**given, "updated_at": utcnow()}))
        return self.get(scope, subject) or {}

    def clear(self, scope: str, subject: str = "") -> bool:
        """Remove one scope's row (its limits inherit again); whether there was one."""
        from stillwatch.guard.db import write_transaction
        from stillwatch.guard.tables import Quota

        subject = "" if scope == "default" else subject
        self._check(scope, subject, {})
        with write_transaction(self.engine) as conn:
            return conn.execute(delete(Quota).where(Quota.scope == scope, Quota.subject == subject)).rowcount > 0

    def get(self, scope: str, subject: str = "") -> dict[str, Any] | None:
        """One scope's row as a dict, or None."""
        rows = [r for r in self.rows() if r["scope"] == scope and r["subject"] == ("" if scope == "default"
                                                                                     else subject)]
        return rows[0] if rows else None

    def rows(self) -> list[dict[str, Any]]:
        """Every row: the default first, then accounts, then keys."""
        from stillwatch.guard.tables import Quota

        with self.engine.connect() as conn:
            found = conn.execute(select(Quota)).all()
        order = {s: i for i, s in enumerate(SCOPES)}
        return sorted(({"scope": r.scope, "subject": r.subject, **{f: getattr(r, f) for f in sorted(_FIELDS)},
                        "updated_at": r.updated_at.isoformat()} for r in found),
                      key=lambda r: (order.get(r["scope"], 9), r["subject"]))

    def lookup(self, account_name: str, key_id: str) -> dict[str, tuple]:
        """The rows that apply to one request: {"default": row, "account": row, "key": row}, each as a tuple
        of the four limits (one indexed query, built once: building a statement costs more than running it)."""
        if self._lookup is None:
            from stillwatch.guard.tables import Quota

            self._lookup = (select(Quota.scope, Quota.requests, Quota.tokens, Quota.key_requests, Quota.key_tokens)
                            .where(or_(and_(Quota.scope == "default", Quota.subject == ""),
                                       and_(Quota.scope == "account", Quota.subject == bindparam("account")),
                                       and_(Quota.scope == "key", Quota.subject == bindparam("key")))))
        with self.engine.connect() as conn:
            rows = conn.execute(self._lookup, {"account": account_name, "key": key_id}).all()
        return {r[0]: tuple(r[1:]) for r in rows}

    def resolve(self, account_name: str, key_id: str | None = None) -> dict[str, str]:
        """The limits in force for an account (and one of its keys), in the `limits` notation: built-in
        defaults, then the default row, the account's row, and the key's own requests and tokens."""
        rows = self.lookup(account_name, key_id or "")
        values = {"requests": DEFAULT_REQUESTS, "tokens": DEFAULT_TOKENS, "key_requests": "unlimited",
                  "key_tokens": "unlimited"}
        for scope in ("default", "account"):
            for name, value in zip(LIMIT_FIELDS, rows.get(scope, ())):
                if value is not None:
                    values[name] = value
        for name, value in zip(("key_requests", "key_tokens"), rows.get("key", ())[:2]):
            if value is not None:
                values[name] = value
        return values

    def seed(self, tables: dict[Any, dict[str, str]]) -> list[str]:
        """Write the quotas file's tables that the database does not have yet; the scopes written."""
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        from stillwatch.guard.db import write_transaction
        from stillwatch.guard.tables import Quota, utcnow

        written = []
        with write_transaction(self.engine) as conn:
            dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            for where, table in tables.items():
                scope, subject = ("default", "") if where == "default" else where
                stmt = dialect_insert(Quota).values(scope=scope, subject=subject, updated_at=utcnow(), **table)
                if conn.execute(stmt.on_conflict_do_nothing(index_elements=[Quota.scope, Quota.subject])).rowcount:
                    written.append(scope if scope == "default" else f"{scope} {subject}")
        return written


def split_namespace(storage_uri: str) -> tuple[str, str]:
    """("redis://h:6379/0?prefix=prod-eu", ...) -> ("redis://h:6379/0", "prod-eu"): deployments that share one
    Redis keep their counters apart with `?prefix=NAME` (default "sw")."""
    base, _, query = storage_uri.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    prefix = [v for k, v in pairs if k == "prefix"]
    if not prefix:
        return storage_uri, "sw"
    rest = urlencode([(k, v) for k, v in pairs if k != "prefix"])
    return base + (f"?{rest}" if rest else ""), prefix[-1] or "sw"


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one request: per kind, the account's and the key's."""

    requests: tuple[RateLimitItem, ...]
    tokens: tuple[RateLimitItem, ...]
    key_requests: tuple[RateLimitItem, ...]
    key_tokens: tuple[RateLimitItem, ...]


class Quotas:
    """Checks and charges quotas for a Principal (anything with account_id, account_name and key_id, and
    optionally throttle_rpm). With a `store`, the limits are the database's, read per request."""

    # Every account's throttle_rpm is enforced (see _scopes), whoever set it. The online detector chooses
    # `throttle` itself only where its quotas say `honours_throttle`; that switch is the detector's to turn
    # on with its policy's escalation (a throttled harvester must still reach block), so it is not set here.

    def __init__(self, storage_uri: str = "memory://", quotas_file: Path | str | None = None,
                 store: QuotaStore | None = None) -> None:
        self.default, self.overrides = load_quotas(quotas_file)
        self.file_tables = read_quota_tables(quotas_file)
        self.store = store
        storage_uri, self.namespace = split_namespace(storage_uri)
        try:
            self.storage = storage_from_string(storage_uri)
            reachable = self.storage.check()
        except Exception as exc:  # noqa: BLE001 - limits raises several kinds for a bad URI
            raise ConfigError(f"rate-limit storage {storage_uri!r}: {exc}") from None
        if not reachable:
            raise ConfigError(f"rate-limit storage {storage_uri!r} is unreachable")
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)

    def seed(self) -> list[str]:
        """Write the quotas file's tables into the database where it has none yet (see the module docstring)."""
        return self.store.seed(self.file_tables) if self.store is not None and self.file_tables else []

    def policy(self, account_name: str) -> QuotaPolicy:
        """The file's policy for an account (without a database)."""
        return self.overrides.get(account_name, self.default)

    def limits_for(self, principal: Any) -> Limits:
        """The limits that apply to `principal`'s requests right now (one database read with a store)."""
        if self.store is None:
            policy = self.policy(principal.account_name)
            return Limits(policy.requests, policy.tokens, policy.key_requests, policy.key_tokens)
        values = self.store.resolve(principal.account_name, principal.key_id)
        return Limits(*(_parse(values[name], name) for name in LIMIT_FIELDS))

    def _scopes(self, principal: Any, kind: str, limits: Limits | None = None) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        limits = limits or self.limits_for(principal)
        account = (self.namespace, "account", str(principal.account_id), kind)
        key = (self.namespace, "key", str(principal.key_id), kind)
        own = getattr(limits, kind)
        if kind == "requests":
            own = throttled(own, getattr(principal, "throttle_rpm", None))
        return [(item, account) for item in own] + [(item, key) for item in getattr(limits, f"key_{kind}")]

    def _headers(self, kind: str, scopes: list[tuple[RateLimitItem, tuple[str, ...]]]) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the limit of `kind` with the least room left."""
        best = None
        for item, ids in scopes:
            reset_at, remaining = self.limiter.get_window_stats(item, *ids)
            if best is None or remaining < best[1]:
                best = (item, remaining, reset_at)
        if best is None:
            return {}
        item, remaining, reset_at = best
        # A sliding window drains as it slides: the whole window is the longest a client waits for all of it.
        reset = min(max(0.0, reset_at - time.time()), float(item.get_expiry()))
        return {f"x-ratelimit-limit-{kind}": str(item.amount), f"x-ratelimit-remaining-{kind}": str(max(0, remaining)),
                f"x-ratelimit-reset-{kind}": _duration(reset)}

    def _refuse(self, item: RateLimitItem, ids: tuple[str, ...], what: str, cost: int) -> QuotaExceeded:
        if cost > item.amount:  # would never fit, however long the client waits
            return QuotaExceeded(0.0, should_retry=False,
                                 message=f"{what} quota is {item} per {ids[1]}; this request needs {cost}")
        reset_at, _ = self.limiter.get_window_stats(item, *ids)
        retry_after = max(1.0, reset_at - time.time())
        return QuotaExceeded(retry_after, should_retry=True, message=f"{what} quota of {item} per {ids[1]} "
                                                                    f"exceeded; retry after {math.ceil(retry_after)} s")

    def check_request(self, principal: Any, limits: Limits | None = None) -> dict[str, str]:
        """Count one request against the request quotas; QuotaExceeded if over one, or out of tokens. Returns
        the x-ratelimit-* headers for the answer."""
        limits = limits or self.limits_for(principal)
        requests, tokens = self._scopes(principal, "requests", limits), self._scopes(principal, "tokens", limits)
        for item, ids in requests:
            if not self.limiter.test(item, *ids):
                raise self._refuse(item, ids, "request", 1)
        for item, ids in tokens:
            if not self.limiter.test(item, *ids):
                raise self._refuse(item, ids, "token", 1)
        for item, ids in requests:
            # Another replica may have taken the last slot since test(): hit() decides.
            if not self.limiter.hit(item, *ids):
                raise self._refuse(item, ids, "request", 1)
        return {**self._headers("requests", requests), **self._headers("tokens", tokens)}

    def check_tokens(self, principal: Any, n: int, limits: Limits | None = None) -> None:
        """QuotaExceeded if `n` more tokens (e.g. prompt + max_tokens) would not fit now; charges nothing."""
        for item, ids in self._scopes(principal, "tokens", limits):
            if n > item.amount or not self.limiter.test(item, *ids, cost=max(1, n)):
                raise self._refuse(item, ids, "token", n)

    def charge_tokens(self, principal: Any, n: int, limits: Limits | None = None) -> None:
        """Charge `n` tokens that were served. Never raises: an overdraft fills the window, and the next
        request is refused until it drains."""
        if n <= 0:
            return
        for item, ids in self._scopes(principal, "tokens", limits):
            if not self.limiter.hit(item, *ids, cost=n):
                _, remaining = self.limiter.get_window_stats(item, *ids)
                if remaining > 0:
                    self.limiter.hit(item, *ids, cost=remaining)

    def reset(self) -> None:
        """Forget every counter (tests, and `memory://` restarts do it anyway)."""
        self.storage.reset()
