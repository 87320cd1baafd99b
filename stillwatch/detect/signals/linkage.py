"""Cross-account linkage: one job spread over many accounts. Accounts are linked when they share a distinctive
parameter fingerprint and their prompt templates overlap, when they share a client address, or when they were
created together with the same fingerprint; connected components are campaigns. A campaign's score says how
much it looks like one task space cut into disjoint shards by accounts made and driven together."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

from stillwatch.detect.embed import normalise
from stillwatch.detect.events import Event
from stillwatch.detect.signals import ramp, scores
from stillwatch.detect.signals.params import fingerprint

DEFAULT_FINGERPRINT = (None, None, -1, 1, None, False)  # what a client sends when it sets nothing


@dataclass(frozen=True)
class LinkageConfig:
    """Thresholds for an edge and for a campaign."""

    template_jaccard: float = 0.3
    top_templates: int = 16
    created_window_s: float = 120.0
    min_cluster: int = 3
    full_cluster: int = 20
    max_pairs: int = 30  # members sampled for the pairwise shard overlap


@dataclass
class Profile:
    """What linkage keeps of one account: bounded summaries only."""

    account: str
    templates: frozenset
    fingerprint: tuple
    prompts: frozenset  # short hashes of the exact prompts (bounded by the window)
    addrs: frozenset = field(default_factory=frozenset)
    agents: frozenset = field(default_factory=frozenset)
    created: float | None = None


def profile(account: str, events: Sequence[Event], created: float | None = None,
            config: LinkageConfig = LinkageConfig()) -> Profile:
    """One account's linkage profile from its recent events."""
    tmpl = Counter(template_head(e.prompt) for e in events if e.prompt)
    prints = Counter(fingerprint(e) for e in events)
    distinctive = [fp for fp, _ in prints.most_common() if fp != DEFAULT_FINGERPRINT]
    # Templates used more than once: the job's; one-off prompts (chat, camouflage) say nothing about a client.
    repeated = [t for t, c in tmpl.most_common(config.top_templates) if c > 1]
    return Profile(account=account, templates=frozenset(repeated),
                   fingerprint=distinctive[0] if distinctive else DEFAULT_FINGERPRINT,
                   prompts=frozenset(hashlib.blake2b(e.prompt.encode("utf-8", "replace"), digest_size=8).digest()
                                     for e in events if e.prompt),
                   addrs=frozenset(e.client_addr for e in events if e.client_addr),
                   agents=frozenset(e.user_agent for e in events if e.user_agent), created=created)


def template_head(prompt: str, length: int = 24) -> str:
    """A prompt's fixed part: its normalised text up to the first number (or `length` characters)."""
    text = normalise(prompt)
    cut = text.find("0")
    return text[:length if cut < 0 else min(cut, length)]


def _jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


class _Union:
    def __init__(self, names: Sequence[str]) -> None:
        self.parent = {n: n for n in names}

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def link(profiles: Sequence[Profile], config: LinkageConfig = LinkageConfig()) -> list[list[str]]:
    """Campaigns: connected components of at least `min_cluster` accounts, largest first, each sorted by name."""
    uf = _Union([p.account for p in profiles])
    by_print: dict[tuple, list[Profile]] = defaultdict(list)
    for p in profiles:
        if p.fingerprint != DEFAULT_FINGERPRINT:  # the default is everyone's: no evidence of a common client
            by_print[p.fingerprint].append(p)
    for group in by_print.values():
        # Same job: one distinctive client setting and overlapping templates. Buckets by template keep it near-linear.
        by_template: dict[str, list[Profile]] = defaultdict(list)
        for p in group:
            for t in p.templates:
                by_template[t].append(p)
        for members in by_template.values():
            for a, b in zip(members, members[1:]):
                if _jaccard(a.templates, b.templates) >= config.template_jaccard:
                    uf.join(a.account, b.account)
        dated = sorted((p for p in group if p.created is not None), key=lambda p: p.created)
        for a, b in zip(dated, dated[1:]):  # made together, set up alike
            if b.created - a.created <= config.created_window_s:
                uf.join(a.account, b.account)
    by_addr: dict[str, list[str]] = defaultdict(list)
    for p in profiles:
        for addr in p.addrs:
            by_addr[addr].append(p.account)
    for names in by_addr.values():
        for a, b in zip(names, names[1:]):
            uf.join(a, b)
    comps: dict[str, list[str]] = defaultdict(list)
    for p in profiles:
        comps[uf.find(p.account)].append(p.account)
    clusters = [sorted(c) for c in comps.values() if len(c) >= config.min_cluster]
    return sorted(clusters, key=lambda c: (-len(c), c[0]))


def linkage(members: Sequence[Profile], config: LinkageConfig = LinkageConfig()) -> dict[str, Any]:
    """How campaign-like one cluster is: its size, disjoint shards of shared templates, co-creation, shared clients."""
    size = len(members)
    sample = sorted(members, key=lambda p: p.account)[:config.max_pairs]
    pairs = list(combinations(sample, 2))
    overlap = sum(_jaccard(a.prompts, b.prompts) for a, b in pairs) / len(pairs) if pairs else 0.0
    shared_t = sum(_jaccard(a.templates, b.templates) for a, b in pairs) / len(pairs) if pairs else 0.0
    disjoint = (1.0 - overlap) * ramp(shared_t, 0.0, 0.5)  # one template space, nothing asked twice
    dated = sorted(p.created for p in members if p.created is not None)
    co = sum(1 for a, b in zip(dated, dated[1:]) if b - a <= config.created_window_s) / max(1, size - 1)
    addrs = Counter(a for p in members for a in p.addrs)
    agents = Counter(a for p in members for a in p.agents)
    shared = sum(1 for p in members if any(addrs[a] > 1 for a in p.addrs)) / max(1, size)
    score = ramp(size, 1, config.full_cluster) * (0.5 * disjoint + 0.25 * co + 0.25 * shared)
    return scores("linkage", score, 0.5,
                  f"{size} linked accounts: prompt overlap {overlap:.0%}, template overlap {shared_t:.0%}, "
                  f"{co:.0%} created together, {shared:.0%} share a client address",
                  num_accounts=size, prompt_overlap=round(overlap, 4), template_overlap=round(shared_t, 4),
                  co_created_share=round(co, 4), shared_addr_share=round(shared, 4),
                  num_user_agents=len(agents), num_addrs=len(addrs))
