"""Quotas: requests and tokens per minute (or any window), per account and per key, on the `limits` library.

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
import time
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

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


def _parse(value: Any, where: str) -> tuple[RateLimitItem, ...]:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string like \"600/minute\" or \"unlimited\", got {value!r}")
    if value.strip().lower() in ("unlimited", "none", ""):
        return ()
    try:
        return tuple(parse_many(value))
    except ValueError:
        raise ConfigError(f"{where}: cannot parse {value!r} "
                          "(use e.g. \"600/minute\" or \"10/second;1000/day\")") from None


def _policy(table: Any, base: QuotaPolicy, where: str) -> QuotaPolicy:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of limits like [{where}] with requests = \"600/minute\", "
                          f"got {table!r}")
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    return replace(base, **{name: _parse(value, f"{where}.{name}") for name, value in table.items()})


def load_quotas(path: Path | str | None) -> tuple[QuotaPolicy, dict[str, QuotaPolicy]]:
    """The default policy and the per-account overrides from a quotas TOML file (built-in defaults if None)."""
    default = QuotaPolicy(requests=_parse(DEFAULT_REQUESTS, "default"), tokens=_parse(DEFAULT_TOKENS, "default"))
    if path is None:
        return default, {}
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"quotas file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"quotas file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"default", "accounts"}
    if unknown:
        raise ConfigError(f"quotas file {path}: unknown table(s) {sorted(unknown)}; use [default] and [accounts.NAME]")
    default = _policy(data.get("default", {}), default, "default")
    accounts = data.get("accounts", {})
    if not isinstance(accounts, dict):
        raise ConfigError(f"quotas file {path}: accounts must be tables like [accounts.NAME], got {accounts!r}")
    overrides = {name: _policy(table, default, f"accounts.{name}") for name, table in accounts.items()}
    return default, overrides


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


class Quotas:
    """Checks and charges quotas for a Principal (anything with account_id, account_name and key_id)."""

    def __init__(self, storage_uri: str = "memory://", quotas_file: Path | str | None = None) -> None:
        self.default, self.overrides = load_quotas(quotas_file)
        storage_uri, self.namespace = split_namespace(storage_uri)
        try:
            self.storage = storage_from_string(storage_uri)
            reachable = self.storage.check()
        except Exception as exc:  # noqa: BLE001 - limits raises several kinds for a bad URI
            raise ConfigError(f"rate-limit storage {storage_uri!r}: {exc}") from None
        if not reachable:
            raise ConfigError(f"rate-limit storage {storage_uri!r} is unreachable")
        self.limiter = SlidingWindowCounterRateLimiter(self.storage)

    def policy(self, account_name: str) -> QuotaPolicy:
        """The policy that applies to an account."""
        return self.overrides.get(account_name, self.default)

    def _scopes(self, principal: Any, kind: str) -> list[tuple[RateLimitItem, tuple[str, ...]]]:
        policy = self.policy(principal.account_name)
        account = (self.namespace, "account", str(principal.account_id), kind)
        key = (self.namespace, "key", str(principal.key_id), kind)
        return ([(item, account) for item in getattr(policy, kind)]
                + [(item, key) for item in getattr(policy, f"key_{kind}")])

    def _refuse(self, item: RateLimitItem, ids: tuple[str, ...], what: str, cost: int) -> QuotaExceeded:
        if cost > item.amount:  # would never fit, however long the client waits
            return QuotaExceeded(0.0, should_retry=False,
                                 message=f"{what} quota is {item} per {ids[1]}; this request needs {cost}")
        reset_at, _ = self.limiter.get_window_stats(item, *ids)
        retry_after = max(1.0, reset_at - time.time())
        return QuotaExceeded(retry_after, should_retry=True, message=f"{what} quota of {item} per {ids[1]} "
                                                                    f"exceeded; retry after {math.ceil(retry_after)} s")

    def check_request(self, principal: Any) -> None:
        """Count one request against the request quotas; QuotaExceeded if over one, or out of tokens."""
        requests, tokens = self._scopes(principal, "requests"), self._scopes(principal, "tokens")
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

    def check_tokens(self, principal: Any, n: int) -> None:
        """QuotaExceeded if `n` more tokens (e.g. prompt + max_tokens) would not fit now; charges nothing."""
        for item, ids in self._scopes(principal, "tokens"):
            if n > item.amount or not self.limiter.test(item, *ids, cost=max(1, n)):
                raise self._refuse(item, ids, "token", n)

    def charge_tokens(self, principal: Any, n: int) -> None:
        """Charge `n` tokens that were served. Never raises: an overdraft fills the window, and the next
        request is refused until it drains."""
        if n <= 0:
            return
        for item, ids in self._scopes(principal, "tokens"):
            if not self.limiter.hit(item, *ids, cost=n):
                _, remaining = self.limiter.get_window_stats(item, *ids)
                if remaining > 0:
                    self.limiter.hit(item, *ids, cost=remaining)

    def reset(self) -> None:
        """Forget every counter (tests, and `memory://` restarts do it anyway)."""
        self.storage.reset()
