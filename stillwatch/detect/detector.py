"""The detector: folds the signals into one risk per account and per campaign, with named reasons.

Risk is a logistic score, risk = σ(bias + Σ wᵢ·sᵢ), over signal scores sᵢ ∈ [0, 1]: each reason is a weight
times a score, so a person can read why. Signals that honest heavy users also show (volume, one template,
distance from the mix) weigh little; signals of extraction itself (uniform coverage, top-k logprobs, n > 1,
elicitation, campaigns) weigh much. The same `Detector` runs online (fed event by event, off the request path)
and offline (fed an audit log), so both give the same verdicts on the same events.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from stillwatch.detect.embed import embed
from stillwatch.detect.events import Event
from stillwatch.detect.signals.cover import CoverConfig, cover
from stillwatch.detect.signals.coverage import CoverageConfig, CoverageCounts, coverage_counts
from stillwatch.detect.signals.elicitation import ElicitationConfig, classifier_scorer, elicitation
from stillwatch.detect.signals.linkage import LinkageConfig, Profile, link, linkage, profile
from stillwatch.detect.signals.mmd import MMDConfig, mmd
from stillwatch.detect.signals.params import ParamsConfig, params
from stillwatch.detect.signals.prada import PradaConfig, PradaTracker
from stillwatch.detect.signals.templates import TemplateConfig, templates
from stillwatch.detect.signals.timing import TimingConfig, timing
from stillwatch.detect.signals.volume import VolumeConfig, volume

DEFAULT_WEIGHTS: dict[str, float] = {
    "volume": 1.0, "templates": 1.0, "mmd": 1.0, "prada": 1.0, "timing": 1.5,
    "coverage": 6.5, "cover": 6.5, "params": 4.0, "elicitation": 5.0, "linkage": 3.0,
}


@dataclass(frozen=True)
class DetectorConfig:
    """Weights, the bias, memory bounds and each signal's settings (defaults live once, here and in them)."""

    bias: float = -6.0  # with nothing suspicious, risk is σ(-6) ≈ 0.0025
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    window: int = 512  # events kept per account: memory is bounded by this
    mmd_samples: int = 64
    reference_per_account: int = 2  # each account adds at most this many prompts to the reference
    reference_size: int = 256
    reason_min: float = 0.5  # a signal's weighted score at or above this is a reason
    seed: int = 0
    use_elicitation: bool = True  # score prompts with the packaged elicitation classifier
    elicit_every: int = 4
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    templates: TemplateConfig = field(default_factory=TemplateConfig)
    prada: PradaConfig = field(default_factory=PradaConfig)
    coverage: CoverageConfig = field(default_factory=CoverageConfig)
    cover: CoverConfig = field(default_factory=CoverConfig)
    params: ParamsConfig = field(default_factory=ParamsConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    elicitation: ElicitationConfig = field(default_factory=ElicitationConfig)
    mmd: MMDConfig = field(default_factory=MMDConfig)
    linkage: LinkageConfig = field(default_factory=LinkageConfig)

    def __post_init__(self) -> None:
        from stillwatch.errors import ConfigError

        unknown = set(self.weights) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ConfigError(f"unknown detector signal(s) {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
        if self.window < 32:
            raise ConfigError("the detector window must hold at least 32 events")


@dataclass
class AccountState:
    """One account's bounded memory: recent events and embeddings, PRADA's sets, cumulative counts."""

    account: str
    window: int
    events: deque = field(init=False)
    vectors: deque = field(init=False)
    elicit: deque = field(init=False)
    prada: PradaTracker = field(default_factory=PradaTracker)
    scored: int = 0  # prompts given to the elicitation classifier
    coverage: CoverageCounts = field(default_factory=CoverageCounts)
    requests: int = 0
    tokens: int = 0
    created: float | None = None

    def __post_init__(self) -> None:
        self.events, self.elicit = deque(maxlen=self.window), deque(maxlen=self.window)
        self.vectors = deque(maxlen=64)


@dataclass
class Assessment:
    """A verdict: risk in [0, 1], the reasons behind it, every signal's scores, and the campaign if any."""

    account: str
    risk: float
    reasons: list[dict[str, Any]]
    signals: dict[str, dict[str, Any]]
    requests: int
    tokens: int
    cluster: int | None = None
    cluster_size: int = 0
    # The requests the verdict rests on: the account's own, or its campaign's when it carries the campaign's
    # risk (each member of a campaign spread thin sends fewer than the policy's minimum on its own).
    basis_requests: int = 0

    def __post_init__(self) -> None:
        self.basis_requests = self.basis_requests or self.requests

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"account": self.account, "risk": round(self.risk, 4), "reasons": self.reasons,
                "requests": self.requests, "basis_requests": self.basis_requests, "tokens": self.tokens,
                "cluster": self.cluster,
                "cluster_size": self.cluster_size, "signals": self.signals}


def fold(signals: dict[str, dict[str, Any]], config: DetectorConfig) -> tuple[float, list[dict[str, Any]]]:
    """σ(bias + Σ wᵢ sᵢ) and the reasons (weighted scores at or above `reason_min`), largest first."""
    logit = config.bias
    reasons = []
    for name, result in signals.items():
        contribution = config.weights.get(name, 0.0) * float(result.get("score", 0.0))
        logit += contribution
        if contribution >= config.reason_min:
            reasons.append({"signal": name, "contribution": round(contribution, 3),
                            "explanation": result.get("explanation", "")})
    reasons.sort(key=lambda r: -r["contribution"])
    return 1.0 / (1.0 + math.exp(-logit)), reasons


class Detector:
    """Incremental per-account state; `observe` events, `assess` one account or `assess_all` with campaigns."""

    def __init__(self, config: DetectorConfig | None = None,
                 elicit_scorer: Callable[[str], dict] | None = None,
                 reference: np.ndarray | None = None) -> None:
        self.config = config or DetectorConfig()
        self.accounts: dict[str, AccountState] = {}
        if elicit_scorer is None and self.config.use_elicitation:
            elicit_scorer = classifier_scorer()
        self.elicit_scorer = elicit_scorer
        self.reference = reference  # embeddings of known-benign prompts; else a sample of all accounts
        self._rng = random.Random(self.config.seed)

    def created(self, account: str, when: float) -> None:
        """Record when an account (or its first key) was made: linkage joins accounts made together."""
        self._state(account).created = when

    def _state(self, account: str) -> AccountState:
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = AccountState(account, self.config.window,
                                                          prada=PradaTracker(self.config.prada))
        return state

    def forget(self, account: str) -> None:
        """Drop everything known about an account (a person cleared it: only new traffic counts)."""
        state = self.accounts.pop(account, None)
        if state is not None and state.created is not None:
            self.created(account, state.created)  # when it was made is not evidence to forget

    def observe(self, event: Event) -> None:
        """Take one event into its account's state (O(window) work, no I/O)."""
        state = self._state(event.account)
        state.events.append(event)
        state.requests += 1
        state.tokens += event.tokens
        if event.prompt:
            vec = embed(event.prompt)
            state.vectors.append(vec)
            state.prada.update(vec)
            state.coverage.add(event.prompt)
            r = event.elicit  # scored once where the record was stored: online and offline agree
            # Else the classifier is the dearest step: every prompt early on, then one in `elicit_every`.
            if r is None and self.elicit_scorer is not None and (
                    state.scored < 64 or state.requests % self.config.elicit_every == 0):
                r = self.elicit_scorer(event.prompt)
            if r is not None and self.elicit_scorer is not None:
                state.scored += 1
                state.elicit.append({"score": r.get("score", 0.0), "flagged": bool(r.get("flagged")),
                                     "category": r.get("category")})

    def observe_many(self, events: Iterable[Event]) -> None:
        """`observe` each event in order."""
        for event in events:
            self.observe(event)

    def benign_reference(self) -> np.ndarray:
        """The reference window for MMD: the operator's, or a few prompts from every account (no one dominates)."""
        if self.reference is not None:
            return self.reference
        rng = random.Random(self.config.seed)
        sample = []
        for name in sorted(self.accounts):
            vecs = list(self.accounts[name].vectors)
            sample += rng.sample(vecs, min(len(vecs), self.config.reference_per_account))
        rng.shuffle(sample)
        sample = sample[:self.config.reference_size]
        return np.stack(sample) if sample else np.zeros((0, 1), dtype=np.float32)

    def signals(self, state: AccountState, reference: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
        """Every signal's scores for one account."""
        c = self.config
        events = list(state.events)
        ref = self.benign_reference() if reference is None else reference
        out = {
            "volume": volume(events, state.requests, state.tokens, c.volume),
            "templates": templates(events, c.templates),
            "prada": state.prada.result(),
            "coverage": coverage_counts(state.coverage, c.coverage),
            "cover": cover(events, state.coverage, c.cover, c.coverage),
            "params": params(events, c.params),
            "timing": timing(events, c.timing),
            "mmd": mmd(np.stack(state.vectors), ref, c.mmd) if state.vectors and len(ref) else
            mmd(np.zeros((0, 1)), np.zeros((0, 1)), c.mmd),
        }
        if self.elicit_scorer is not None:
            out["elicitation"] = elicitation(list(state.elicit), c.elicitation)
        return out

    def assess(self, account: str, reference: np.ndarray | None = None) -> Assessment:
        """One account's verdict, on its own traffic only."""
        state = self.accounts[account]
        sig = self.signals(state, reference)
        risk, reasons = fold(sig, self.config)
        return Assessment(account, risk, reasons, sig, state.requests, state.tokens)

    def profiles(self) -> list[Profile]:
        """Every account's linkage profile."""
        return [profile(s.account, list(s.events), s.created, self.config.linkage) for s in self.accounts.values()]

    def assess_cluster(self, members: list[str], profiles: dict[str, Profile]) -> tuple[float, list, dict]:
        """A campaign's risk: the signals on the union of its members' traffic, plus linkage."""
        c = self.config
        events = sorted((e for m in members for e in self.accounts[m].events), key=lambda e: e.time)
        counts = CoverageCounts()
        for m in members:
            counts = counts.merge(self.accounts[m].coverage)
        sig = {
            "volume": volume(events, sum(self.accounts[m].requests for m in members),
                             sum(self.accounts[m].tokens for m in members), c.volume),
            "templates": templates(events, c.templates),
            "coverage": coverage_counts(counts, c.coverage),
            "params": params(events, c.params),
            "linkage": linkage([profiles[m] for m in members], c.linkage),
        }
        if self.elicit_scorer is not None:
            sig["elicitation"] = elicitation([r for m in members for r in self.accounts[m].elicit], c.elicitation)
        # Many independent users of one kind (researchers who all sweep temperature) add up to what one
        # harvester does; only evidence that they act together lets the union's signals count: made together,
        # one client address, or disjoint shards that together cover the task space uniformly.
        link_sig = sig["linkage"]
        together = max(link_sig["co_created_share"], link_sig["shared_addr_share"],
                       (1.0 - link_sig["prompt_overlap"]) * sig["coverage"]["score"])
        link_sig["coordination"] = round(together, 4)
        scaled = {name: (r if name == "linkage" else {**r, "score": r["score"] * together}) for name, r in sig.items()}
        risk, reasons = fold(scaled, c)
        return risk, reasons, sig

    def assess_all(self) -> list[Assessment]:
        """Every account's verdict; a campaign member takes its campaign's risk when that is higher."""
        reference = self.benign_reference()
        out = {name: self.assess(name, reference) for name in sorted(self.accounts)}
        profiles = {p.account: p for p in self.profiles()}
        for number, members in enumerate(link(list(profiles.values()), self.config.linkage), 1):
            risk, reasons, sig = self.assess_cluster(members, profiles)
            for m in members:
                a = out[m]
                a.cluster, a.cluster_size = number, len(members)
                a.signals["campaign"] = {"risk": round(risk, 4), "reasons": reasons, "signals": sig}
                if risk > a.risk:
                    a.risk = risk
                    a.reasons = [{**r, "signal": f"campaign.{r['signal']}"} for r in reasons]
                    a.basis_requests = sum(self.accounts[x].requests for x in members)
        return sorted(out.values(), key=lambda a: (-a.risk, a.account))


def detect(events: Iterable[Event], config: DetectorConfig | None = None, created: dict[str, float] | None = None,
           elicit_scorer: Callable[[str], dict] | None = None) -> list[Assessment]:
    """Offline: replay events (oldest first) through a fresh Detector and assess every account."""
    det = Detector(config, elicit_scorer)
    for name, when in (created or {}).items():
        det.created(name, when)
    det.observe_many(events)
    return det.assess_all()
