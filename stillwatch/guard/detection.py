"""Online extraction detection in the gateway: a background task follows the audit log, feeds the same
`Detector` the offline `stillwatch detect` uses (in a worker thread, never on the request path), assesses the
accounts and applies the policy's action through the account store, storing each action with its evidence.

Across replicas: the detector follows the shared audit log, not its own replica's traffic, so it sees the
union of every replica's requests. On PostgreSQL one replica at a time runs it, the holder of a session
advisory lock; when that replica dies its connection closes, the lock frees and another replica takes over,
rebuilding its state from the last `detection_replay_records` records. Actions go through the shared account
table, so they hold on every replica from their next request. Operators' actions are read from the shared
action history: an account a person cleared is judged on its traffic after the clearance only.

Each served record's elicitation scores are written back into the audit log here (evidence, and offline
re-scoring later), so that the classifier costs the request path nothing.

Actions the gateway cannot honour fall back through the policy's `fallback`, else to the next stronger action
(never silently weaker): `degrade` needs the local backend with an antidistillation proxy, and `throttle` needs
quotas that say `honours_throttle`. Start-up logs which actions fall back; each action's evidence says so too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select, text

from stillwatch.detect.detector import Assessment, Detector, DetectorConfig
from stillwatch.detect.events import Event
from stillwatch.detect.policy import ACTIONS, Policy, load_policy
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.actions import ActionLog
from stillwatch.guard.audit import served_page, store_elicit
from stillwatch.guard.tables import AuditRecord

log = logging.getLogger("stillwatch.guard.detection")
EXAMPLES = 5  # record hashes kept per account as examples in the evidence
_LEADER_LOCK = 0x5717_DE7E  # pg_try_advisory_lock key: which replica runs the detector
# Manual actions that lift a restriction: the person has judged the evidence so far, so it is forgotten.
LIFTING = frozenset({"clear", "unblock", "undegrade", "show_reasoning", "unthrottle"})


def unavailable_actions(settings: Any, backend: Any = None, quotas: Any = None) -> frozenset[str]:
    """The policy actions this gateway cannot honour: degrade needs the local backend and a proxy student,
    throttle needs quotas that apply per-account throttles."""
    out = set()
    can_degrade = getattr(backend, "can_degrade", None)
    if can_degrade is None:
        can_degrade = settings.upstream is None and settings.antidistill_proxy is not None
    if not can_degrade:
        out.add("degrade")
    if not getattr(quotas, "honours_throttle", False):
        out.add("throttle")
    return frozenset(out)


class Leadership:
    """Whether this replica runs the detector: on PostgreSQL, while it holds a session advisory lock on its own
    connection; on any other database (one process), always."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Any = None

    def holds(self) -> bool:
        """Take or keep the lock (worker thread); False while another replica holds it or the database is down."""
        if self.engine.dialect.name != "postgresql":
            return True
        try:
            if self._conn is None:
                conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                if not conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": _LEADER_LOCK}):
                    conn.close()
                    return False
                self._conn = conn
                log.info("this replica now runs the detector")
            else:
                self._conn.scalar(text("SELECT 1"))  # the lock lives as long as this connection
            return True
        except Exception as exc:  # noqa: BLE001 - a lost connection is lost leadership, not a crash
            log.warning("detector leadership lost: %s", type(exc).__name__)
            self.release()
            return False

    def release(self) -> None:
        """Give the lock up (closing the connection frees it)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None


class OnlineDetection:
    """One per app: the task that follows the audit log, assesses and acts."""

    def __init__(self, store: AccountStore, settings: Any, policy: Policy | None = None,
                 config: DetectorConfig | None = None) -> None:
        self.store = store
        self.actions = ActionLog(store.engine)
        self.settings = settings
        self.policy = policy or load_policy(settings.policy_file)
        self.config = config
        self.detector: Detector | None = None  # built in the worker thread (it loads the elicitation model)
        self.leadership = Leadership(store.engine)
        self.unavailable: frozenset[str] = frozenset()
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._cursor: int | None = None  # the last audit record id seen
        self._action_cursor = 0
        self._names: dict[int, str] = {}
        self._examples: dict[str, deque] = {}
        self._applied: dict[str, str] = {}  # the strongest action in force on each account
        self._cleared: dict[str, float] = {}  # when a person last lifted a restriction, per account
        self.assessments = 0
        self.observed = 0
        self.taken: Counter[str] = Counter()
        self.leader = False
        self._pending: set[str] = set()  # accounts with traffic since the last full assessment
        self._full_at = float("-inf")

    # --- lifecycle ------------------------------------------------------------------------------------
    async def start(self, backend: Any = None, quotas: Any = None) -> None:
        """Start the background task; say which of the policy's actions fall back on this gateway."""
        self.unavailable = unavailable_actions(self.settings, backend, quotas)
        for action in sorted(self.unavailable, key=ACTIONS.index):
            if any(step.action == action for step in self.policy.steps):
                log.warning("policy %s: %s cannot be honoured here; %s is taken instead", self.policy.version,
                            action, self._fallback(action))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stillwatch-detect")
        self._task = asyncio.create_task(self._loop(), name="stillwatch-detection")

    async def stop(self) -> None:
        """Stop the task (the audit log keeps everything; the next detector replays it)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.submit(self.leadership.release)
            self._executor.shutdown(wait=True)
        self._task = self._executor = None

    def _fallback(self, action: str) -> str:
        return self.policy.substitute(action, self.unavailable)

    # --- the background task --------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.detection_interval_s)
            try:
                await loop.run_in_executor(self._executor, self.step)
            except Exception as exc:  # noqa: BLE001 - detection must never take the gateway down
                log.error("online detection failed: %s: %s", type(exc).__name__, str(exc)[:200])

    def step(self) -> list[dict[str, Any]]:
        """One pass (worker thread): if this replica leads, read what is new in the audit log and the action
        history, observe it, assess, act. Returns the actions taken."""
        self.leader = self.leadership.holds()
        if not self.leader:
            self._cursor = None  # when leadership comes back, replay: another replica ran meanwhile
            self.detector = None
            return []
        if self.detector is None:
            self.detector = Detector(self.config)
        if self._cursor is None:
            self._begin()
        self._follow_actions()
        rows = served_page(self.store.engine, self._cursor or 0, self.settings.detection_batch_max)
        if rows:
            self._cursor = rows[-1]["id"]
            self.process(rows)
        now = time.monotonic()
        if self._pending and now - self._full_at >= self.settings.detection_full_assess_s:
            self._full_at, self._pending = now, set()
            return self._assess()  # every account, and the campaigns linking them
        touched = {r["account"] for r in rows if r.get("account") in self.detector.accounts}
        self._pending |= touched
        return self._assess(touched) if touched else []

    def _begin(self) -> None:
        """Where to start following: the last `detection_replay_records` records, and every action so far."""
        with self.store.engine.connect() as conn:
            newest = int(conn.scalar(select(func.max(AuditRecord.id))) or 0)
        self._cursor = max(0, newest - self.settings.detection_replay_records)
        self._applied.clear()
        self._cleared.clear()
        self._action_cursor = 0
        self._follow_actions()

    def _follow_actions(self) -> None:
        """Take in actions stored since the last pass: a person's lifting one makes the detector forget."""
        while True:
            batch = self.actions.since(self._action_cursor)
            if not batch:
                return
            for a in batch:
                self._action_cursor = a["id"]
                name = self._name(a["account_id"])
                if name is None:
                    continue
                if a["source"] == "operator" and a["action"] in LIFTING:
                    self._applied.pop(name, None)
                    self._cleared[name] = datetime.fromisoformat(a["time"]).timestamp()
                    if self.detector is not None:
                        self.detector.forget(name)
                    self._examples.pop(name, None)
                elif a["action"] in ACTIONS:
                    before = self._applied.get(name, "allow")
                    if ACTIONS.index(a["action"]) > ACTIONS.index(before):
                        self._applied[name] = a["action"]

    def process(self, rows: list[dict[str, Any]]) -> None:
        """Observe served audit rows (oldest first), scoring and storing each prompt's elicitation scores."""
        assert self.detector is not None
        scores = {}
        for row in rows:
            name = row.get("account")
            if name is None:
                continue
            if int(row["account_id"]) not in self._names:
                self._name(int(row["account_id"]))  # learns when the account was made, for linkage
            event = Event.from_row(row)
            if event.time <= self._cleared.get(name, float("-inf")):
                continue  # judged and cleared by a person
            if event.elicit is None and event.prompt:
                event.elicit = scores[row["id"]] = score_for_audit(row.get("prompt"))
            self.detector.observe(event)
            self.observed += 1
            self._examples.setdefault(name, deque(maxlen=EXAMPLES)).append(
                {"record_hash": row.get("record_hash"), "prompt_sha256": row.get("prompt_sha256")})
        if scores:
            try:
                store_elicit(self.store.engine, scores)
            except Exception as exc:  # noqa: BLE001 - the scores are evidence, not the request's business
                log.warning("storing elicitation scores failed: %s", type(exc).__name__)

    def _assess(self, only: set[str] | None = None) -> list[dict[str, Any]]:
        """Assess and act: every account with campaigns, or only the accounts in `only`, each on its own (a
        pass over thousands of accounts costs seconds of CPU; an account's own verdict costs milliseconds)."""
        assert self.detector is not None
        self.assessments += 1
        if only is None:
            results = self.detector.assess_all()
        else:
            reference = self.detector.benign_reference()
            results = [self.detector.assess(name, reference) for name in sorted(only)]
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
                if account["id"] not in self._names and self.detector is not None and account.get("created_at"):
                    self.detector.created(account["name"], Event.from_row({"time": account["created_at"]}).time)
                self._names[account["id"]] = account["name"]
            name = self._names.get(account_id)
        return name

    def _act(self, a: Assessment, cluster: list[str]) -> dict[str, Any] | None:
        requested = self.policy.action(a.risk, a.basis_requests)
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
            "risk": round(a.risk, 4), "requests": a.requests, "basis_requests": a.basis_requests,
            "tokens": a.tokens, "reasons": a.reasons,
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
        elif applied == "hide_reasoning":
            self.store.set_hide_reasoning(a.account, True)
        elif applied == "throttle":
            self.store.set_throttle(a.account, self.policy.throttle_rpm)
            evidence["throttle_rpm"] = self.policy.throttle_rpm
        self.actions.record(account["id"], applied, requested, "detector", evidence, risk=a.risk,
                            policy_version=self.policy.version, note=note)
        self._applied[a.account] = applied
        self.taken[applied] += 1
        (log.warning if note else log.info)("detector: %s on %s (risk %.2f)%s", applied, a.account, a.risk,
                                            f"; {note}" if note else "")
        return {"account": a.account, "action": applied, "requested": requested, "risk": a.risk}


# A prompt's head and tail are what is scored: the classifier's cost, and its hold on the interpreter that the
# event loop shares, stay bounded however large the prompt (injections sit at either end).
SCORED_CHARS = 20_000


def score_for_audit(prompt: Any) -> dict[str, Any] | None:
    """The elicitation classifier's compact scores for an audit record's prompt (text or chat messages as JSON)."""
    import json

    from stillwatch.detect.elicit import score_messages

    if isinstance(prompt, str) and len(prompt) > SCORED_CHARS:
        prompt = prompt[:SCORED_CHARS // 2] + "\n" + prompt[-SCORED_CHARS // 2:]
    elif isinstance(prompt, str) and prompt[:1] == "[":
        try:
            prompt = json.loads(prompt)
        except ValueError:
            pass
    if not prompt:
        return None
    return score_messages(prompt)


def detect_database(engine: Engine, policy: Policy | None = None) -> dict[str, Any]:
    """Offline: every served record of an audit database through a fresh Detector, each account graded by the
    policy (the same code and the same stored elicitation scores as online)."""
    from stillwatch.detect.detector import detect
    from stillwatch.guard.audit import iter_served

    policy = policy or load_policy()
    created = {a["name"]: Event.from_row({"time": a["created_at"]}).time
               for a in AccountStore(engine).list_accounts() if a.get("created_at")}
    results = detect((Event.from_row(row) for row in iter_served(engine)), created=created)
    rows = [{**a.as_dict(), "action": policy.action(a.risk, a.basis_requests)} for a in results]
    return {"policy": policy.version, "accounts": rows}
