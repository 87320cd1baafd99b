"""The traffic simulator: honest and attacker clients from `traffic.plan` driven through a live gateway with the
official `openai` client, each with its own key and its own address (X-Forwarded-For). Seeded, bounded in time
and in requests, and loopback only: it refuses any endpoint that is not 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from stillwatch.detect.traffic import ATTACKERS, HONEST, Planned, plan
from stillwatch.errors import ConfigError, StillwatchError


def _v1(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class SimulationError(StillwatchError):
    """The gateway refused the simulator's setup (admin key, account creation) or could not be reached."""


def parse_counts(text: str) -> dict[str, int]:
    """`chat=20,app=2` as {"chat": 20, "app": 2}; ConfigError for an unknown profile or a bad count."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, count = part.partition("=")
        if name not in HONEST + ATTACKERS:
            raise ConfigError(f"unknown profile {name!r}; choose from {', '.join(HONEST + ATTACKERS)}")
        try:
            out[name] = int(count or 1)
        except ValueError:
            raise ConfigError(f"bad count in {part!r}: write profile=N") from None
        if out[name] < 0:
            raise ConfigError(f"count of {name} must be at least 0")
    return out


@dataclass(frozen=True)
class SimulationConfig:
    """Who sends what, for how long; the endpoint must be loopback."""

    endpoint: str
    seed: int = 0
    duration: float = 60.0
    max_requests: int = 20000
    honest: dict[str, int] = field(default_factory=lambda: {"chat": 20, "app": 2, "eval": 2, "researcher": 2})
    attackers: dict[str, int] = field(default_factory=lambda: {p: 1 for p in ATTACKERS if p != "campaign"})
    campaign_accounts: int = 0
    concurrency: int = 16
    model: str | None = None
    prefix: str = "sim"
    timeout: float = 30.0
    # More replicas of the same gateway: client i talks to (endpoint, *replicas)[i % n], admin calls to endpoint.
    replicas: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for url in (self.endpoint, *self.replicas):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or parts.hostname != "127.0.0.1":
                raise ConfigError(f"the simulator only drives a gateway on 127.0.0.1, not {url!r}")
        if self.duration <= 0 or self.max_requests < 1 or self.concurrency < 1:
            raise ConfigError("duration, max_requests and concurrency must be positive")

    @property
    def base_url(self) -> str:
        """The /v1 base URL."""
        return _v1(self.endpoint)

    def base_url_for(self, index: int) -> str:
        """The /v1 base URL client number `index` uses."""
        urls = (self.endpoint, *self.replicas)
        return _v1(urls[index % len(urls)])

    @property
    def admin_url(self) -> str:
        """The admin API's URL beside /v1."""
        return self.base_url[:-3] + "/admin"


@dataclass
class Client:
    """One simulated account: its plan, address, key and what happened to it."""

    account: str
    profile: str
    kind: str
    addr: str
    plan: list[Planned]
    key: str | None = None
    sent: int = 0
    ok: int = 0
    refused: int = 0
    errors: int = 0
    first_refusal: int | None = None  # requests served before the first refusal
    tokens_before_refusal: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def outcome(self) -> dict[str, Any]:
        """Plain data for the report."""
        return {"account": self.account, "profile": self.profile, "kind": self.kind, "addr": self.addr,
                "planned": len(self.plan), "sent": self.sent, "ok": self.ok, "refused": self.refused,
                "errors": self.errors, "served_before_refusal": self.first_refusal,
                "tokens_before_refusal": self.tokens_before_refusal, "statuses": self.statuses}


def clients(config: SimulationConfig) -> list[Client]:
    """Every simulated client with its plan (pure: the same config gives the same clients)."""
    rng = random.Random(config.seed)
    out = []
    roster = [("honest", p, i) for p, c in config.honest.items() for i in range(c)]
    roster += [("attacker", p, i) for p, c in config.attackers.items() for i in range(c) if p != "campaign"]
    rng.shuffle(roster)  # attackers among the honest, not in a block
    for n, (kind, prof, i) in enumerate(roster):
        start = rng.uniform(0, config.duration * 0.2)
        steps = plan(prof, config.seed * 1000 + i, config.duration * 0.8)
        for p in steps:
            p.at += start
        out.append(Client(f"{config.prefix}-{prof}-{i}", prof, kind, f"10.{n // 250}.{n % 250}.{rng.randint(1, 254)}",
                          steps))
    k = config.campaign_accounts
    for i in range(k):
        out.append(Client(f"{config.prefix}-campaign-{i}", "campaign", "attacker",
                          f"172.{16 + i // 250}.{i % 250}.{rng.randint(1, 254)}",
                          plan("campaign", config.seed, config.duration, shard=(i, k))))
    return out


async def _create_keys(config: SimulationConfig, admin_key: str, group: list[Client], http: Any) -> None:
    import httpx

    for c in group:
        for attempt in range(3):
            try:
                r = await http.post(f"{config.admin_url}/accounts/{c.account}/keys",
                                    headers={"Authorization": f"Bearer {admin_key}"})
                break
            except httpx.TransportError:
                # A pooled connection the server closed while idle (keep-alive ends after seconds, sessions
                # start minutes apart) fails once; a new connection does not. A second key would be harmless.
                if attempt == 2:
                    raise
        if r.status_code != 201:
            raise SimulationError(f"the admin API refused to make a key for {c.account} ({r.status_code})")
        c.key = r.json()["key"]


async def _send(api: Any, model: str, c: Client, p: Planned) -> tuple[int, int]:
    """Send one planned request; (status, completion tokens)."""
    import openai

    kwargs = dict(p.params)
    try:
        if p.messages is not None:
            resp = await api.chat.completions.create(model=model, messages=p.messages, **kwargs)
        else:
            resp = await api.completions.create(model=model, prompt=p.prompt, **kwargs)
        return 200, int(resp.usage.completion_tokens if resp.usage else 0)
    except openai.APIStatusError as exc:
        return exc.status_code, 0
    except openai.APIError:
        return 0, 0


async def run(config: SimulationConfig, admin_key: str | None) -> dict[str, Any]:
    """Create the accounts, then send every plan on its schedule until the duration or request cap is reached."""
    import httpx
    import openai

    everyone = clients(config)
    async with httpx.AsyncClient(timeout=config.timeout, trust_env=False) as http:
        if admin_key is None:
            raise SimulationError("give --admin-key-file: the simulator makes its own accounts and keys")
        # The campaign's accounts are made in one sitting; everyone else when their first session starts.
        await _create_keys(config, admin_key, [c for c in everyone if c.profile == "campaign"], http)
        model = config.model
        if model is None:
            r = await http.get(f"{config.base_url}/models", headers={"Authorization": f"Bearer {everyone[0].key}"}) \
                if everyone and everyone[0].key else None
            model = r.json()["data"][0]["id"] if r is not None and r.status_code == 200 else "stillwatch"
        pool = httpx.AsyncClient(timeout=config.timeout, trust_env=False,
                                 limits=httpx.Limits(max_connections=config.concurrency))
        apis: dict[str, Any] = {}
        sem = asyncio.Semaphore(config.concurrency)
        t0 = time.monotonic()
        budget = {"left": config.max_requests}
        created: set[str] = set()
        lock = asyncio.Lock()

        async def one(c: Client, p: Planned) -> None:
            delay = p.at - (time.monotonic() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - t0 > config.duration or budget["left"] <= 0:
                return
            if c.key is None:
                async with lock:
                    if c.account not in created:
                        created.add(c.account)
                        await _create_keys(config, admin_key, [c], http)
            api = apis.get(c.account)
            if api is None:
                api = apis[c.account] = openai.AsyncOpenAI(
                    api_key=c.key, base_url=config.base_url_for(index[c.account]), http_client=pool, max_retries=0,
                    default_headers={"X-Forwarded-For": c.addr, "User-Agent": f"stillwatch-sim/{c.profile}"})
            if budget["left"] <= 0:  # again: others spent it while this one waited for its key
                return
            budget["left"] -= 1
            async with sem:
                status, tokens = await _send(api, model, c, p)
            c.sent += 1
            c.statuses[str(status)] = c.statuses.get(str(status), 0) + 1
            if status == 200:
                c.ok += 1
                if c.first_refusal is None:
                    c.tokens_before_refusal += tokens
            elif status in (403, 429):
                c.refused += 1
                if c.first_refusal is None:
                    c.first_refusal = c.ok
            else:
                c.errors += 1

        index = {c.account: i for i, c in enumerate(everyone)}
        jobs = [(p.at, c, p) for c in everyone for p in c.plan]
        jobs.sort(key=lambda j: j[0])
        try:
            await asyncio.gather(*(one(c, p) for _, c, p in jobs))
        finally:
            await pool.aclose()
        seconds = time.monotonic() - t0
    sent = sum(c.sent for c in everyone)
    return {"config": {"seed": config.seed, "duration": config.duration, "max_requests": config.max_requests,
                       "honest": config.honest, "attackers": config.attackers,
                       "campaign_accounts": config.campaign_accounts},
            "totals": {"sent": sent, "ok": sum(c.ok for c in everyone), "refused": sum(c.refused for c in everyone),
                       "errors": sum(c.errors for c in everyone), "seconds": round(seconds, 3)},
            "accounts": [c.outcome() for c in everyone]}


def simulate(config: SimulationConfig, admin_key: str | None) -> dict[str, Any]:
    """Run the simulation to completion (its own event loop) and return the per-account outcome."""
    import httpx

    try:
        return asyncio.run(run(config, admin_key))
    except (OSError, httpx.HTTPError) as exc:
        raise SimulationError(f"cannot reach the gateway at {config.endpoint}: {exc}") from None
