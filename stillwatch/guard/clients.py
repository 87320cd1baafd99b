"""Who the client is, as far as the gateway can tell: its address (X-Forwarded-For only from a trusted
proxy) and its User-Agent, both recorded in the audit log as evidence and linkage signals."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from stillwatch.guard.audit import USER_AGENT_CHARS

ADDR_CHARS = 64


@lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in trusted)


def _trusted(addr: str, nets: tuple) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in nets)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[str, ...]) -> str | None:
    """The client's address: the peer, unless the peer is a trusted proxy; then the nearest X-Forwarded-For
    hop that is not one (the hops further left were written by whoever sent the request, so are unproven)."""
    nets = _networks(trusted)
    if not peer or not forwarded_for or not nets or not _trusted(peer, nets):
        return peer[:ADDR_CHARS] if peer else None
    hops = [h.strip() for h in forwarded_for[:4096].split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, nets):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:  # a proxy passed on garbage: keep what it said, shortened, as a string
                return hop[:ADDR_CHARS]
    return hops[0][:ADDR_CHARS] if hops else peer[:ADDR_CHARS]


def user_agent(header: str | None) -> str | None:
    """The User-Agent, shortened and without control characters (it is client-written text)."""
    if not header:
        return None
    return "".join(ch if ch.isprintable() else "?" for ch in header[:USER_AGENT_CHARS])
