"""Online extraction detection in the gateway: the audit writer hands every committed record to a bounded
queue; a background task drains it, feeds the same `Detector` the offline `stillwatch detect` uses (in a worker
thread, never on the request path), assesses the accounts periodically and applies the policy's action through
the account store, storing each action with its evidence.

Actions the gateway cannot honour fall back through the policy's `fallback` (never silently weaker):
`throttle` and `hide_reasoning` are not yet served per account, and `degrade` needs the local backend with an
antidistillation proxy. Start-up logs which actions fall back; each action's evidence says so too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from stillwatch.detect.detector import Assessment, Detector, DetectorConfig
from stillwatch.detect.events import Event
from stillwatch.detect.policy import ACTIONS, Policy, load_policy
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.actions import ActionLog

log = logging.getLogger("stillwatch.guard.detection")
EXAMPLES = 5  # prompt hashes kept per account as examples in the evidence
UNSERVED = frozenset({"throttle", "hide_reasoning"})  # actions the gateway cannot yet apply per account


def unavailable_actions(settings: Any, backend: Any = None) -> frozenset[str]:
    """The policy actions this gateway cannot honour (degrade needs the local backend and a proxy student)."""
    can_degrade = getattr(backend, "can_degrade", None)
    if can_degrade is None:
        can_degrade = settings.upstream is None and settings.antidistill_proxy is not None
    return UNSERVED | (frozenset() if can_degrade else frozenset({"degrade"}))


class OnlineDetection:
    """One per app: the bounded queue, the detector, and the task that assesses and acts."""

    def __init__(self, store: AccountStore, settings: Any, policy: Policy | None = None,
                 config: DetectorConfig | None = None) -> None:
        self.store = store
        self.actions = ActionLog(store.engine)
        self.settings = settings
        self.policy = policy or load_policy(settings.policy_file)
        self.config = config
        self.detector: Detector | None = None  # built in the worker thread (it loads the elicitation model)
        self.unavailable: frozenset[str] = frozenset()
        self._queue: deque[dict[str, Any]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._names: dict[int, str] = {}
        self._examples: dict[str, deque] = {}
        self._touched: set[str] = set()
        self._applied: dict[str, str] = {}  # the strongest action taken so far on each account
        self.dropped = 0  # records the detector never saw because the queue was full
        self.assessments = 0

    # --- lifecycle ------------------------------------------------------------------------------------
    async def start(self, backend: Any = None) -> None:
        """Start the background task; say which of the policy's actions fall back on this gateway."""
        self.unavailable = unavailable_actions(self.settings, backend)
        for action in sorted(self.unavailable, key=ACTIONS.index):
            if any(step.action == action for step in self.policy.steps):
                log.warning("policy %s: %s cannot be honoured here; %s is taken instead", self.policy.version,
                            action, self._fallback(action))
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stillwatch-detect")
        self._task = asyncio.create_task(self._loop(), name="stillwatch-detection")

    async def stop(self) -> None:
        """Stop the task (whatever is queued is dropped: the audit log holds it, and offline detect reads it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._executor = None

    def _fallback(self, action: str) -> str:
        seen, chosen = set(), action
        while chosen in self.unavailable and chosen not in seen:
            seen.add(chosen)
            chosen = self.policy.fallback.get(chosen, "block")  # type: ignore[call-overload]
        return chosen

    # --- feeding (event loop, O(1)) --------------------------------------------------------------------
    def offer(self, rows: list[dict[str, Any]]) -> None:
        """Take committed audit rows; beyond the bound the oldest waiting are dropped and counted."""
        for row in rows:
            if row.get("account_id") is None or int(row.get("status") or 0) >= 400:
                continue
            if row.get("completion") is None and row.get("completion_sha256") is None:
                continue  # the same records iter_served gives the offline detector
            if len(self._queue) >= self.settings.detection_queue_max:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(row)

    # --- the background task --------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.detection_interval_s)
            if not self._queue:
                continue
            batch = list(self._queue)
            self._queue.clear()
            try:
                await loop.run_in_executor(self._executor, self.process, batch)
            except Exception as exc:  # noqa: BLE001 - detection must never take the gateway down
                log.error("online detection failed: %s: %s", type(exc).__name__, str(exc)[:200])

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Observe `rows`, assess every account, and act where the policy says so (worker thread)."""
        if self.detector is None:
            self.detector = Detector(self.config)
        for row in rows:
            name = self._name(int(row["account_id"]))
            if name is None:
                continue
            self._touched.add(name)
            self.detector.observe(Event.from_row({**row, "account": name, "time": row["created_at"]}))
            self._examples.setdefault(name, deque(maxlen=EXAMPLES)).append(
                {"record_hash": row.get("record_hash"), "prompt_sha256": row.get("prompt_sha256")})
        if not self._touched:
            return []
        self._touched.clear()
        self.assessments += 1
        results = self.detector.assess_all()
        clusters: dict[int, list[str]] = {}
        for a in results:
            if a.cluster is not None:
                clusters.setdefault(a.cluster, []).append(a.account)
        taken = []
        for a in results:
            done = self._act(a, clusters.get(a.cluster, []) if a.cluster is not None else [])
            if done is not None:
                taken.append(done)
        return taken

    def _name(self, account_id: int) -> str | None:
        name = self._names.get(account_id)
        if name is None:
            for account in self.store.list_accounts():  # names never change: one read fills the cache
                self._names[account["id"]] = account["name"]
                if self.detector is not None and account.get("created_at"):
                    self.detector.created(account["name"], Event.from_row({"time": account["created_at"]}).time)
            name = self._names.get(account_id)
        return name

    def _act(self, a: Assessment, cluster: list[str]) -> dict[str, Any] | None:
        requested = self.policy.action(a.risk, a.requests)
        if requested == "allow":
            return None
        applied = self._fallback(requested)
        before = self._applied.get(a.account)
        if before is not None and ACTIONS.index(applied) <= ACTIONS.index(before):
            return None  # nothing new: an action is stored once, not on every assessment
        account = self.store.get_account(a.account)
        if account["blocked"]:
            self._applied[a.account] = "block"
            return None
        steps = [{"action": s.action, "risk": s.risk} for s in self.policy.steps]
        crossed = [s for s in steps if a.risk >= s["risk"]]
        note = None if applied == requested else f"{requested} cannot be honoured by this gateway; {applied} taken"
        evidence = {
            "risk": round(a.risk, 4), "requests": a.requests, "tokens": a.tokens, "reasons": a.reasons,
            "signals": a.signals, "thresholds": {"crossed": crossed, "steps": steps,
                                                 "min_requests": self.policy.min_requests},
            "examples": list(self._examples.get(a.account, [])),
            "linked_accounts": sorted(m for m in cluster if m != a.account),
            "cluster": a.cluster, "policy_version": self.policy.version,
        }
        reason = "; ".join(f"{r['signal']}: {r['explanation']}" for r in a.reasons[:3])[:500]
        if applied == "block":
            self.store.block(a.account, f"automatic ({self.policy.version}, risk {a.risk:.2f}): {reason}")
        elif applied == "degrade":
            self.store.set_degraded(a.account, True)
        self.actions.record(account["id"], applied, requested, "detector", evidence, risk=a.risk,
                            policy_version=self.policy.version, note=note)
        self._applied[a.account] = applied
        (log.warning if note else log.info)("detector: %s on %s (risk %.2f)%s", applied, a.account, a.risk,
                                            f"; {note}" if note else "")
        return {"account": a.account, "action": applied, "requested": requested, "risk": a.risk}
