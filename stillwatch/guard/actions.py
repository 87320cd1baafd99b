"""Each account's action history: every automatic (detector) or manual (operator) action, with the evidence
behind it, and the review queue of detector actions no person has looked at yet.

An operator's action is stored like the detector's, with the account's state before it and the operator's
note. `clear` lifts every restriction and tells the detector to forget the evidence before it: the account is
acted on again only if new traffic, on its own, calls for it.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, func, insert, select

from stillwatch.errors import StillwatchError
from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.db import write_transaction
from stillwatch.guard.tables import AccountAction, utcnow


class ActionLog:
    """Append and read `account_actions` rows; one short transaction each."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, account_id: int, action: str, requested: str, source: str, evidence: dict[str, Any],
               risk: float | None = None, policy_version: str | None = None, note: str | None = None) -> None:
        """Store one action and its evidence (made plain JSON first, whatever the caller passed)."""
        plain = json.loads(json.dumps(evidence, default=str))
        with write_transaction(self.engine) as conn:
            conn.execute(insert(AccountAction).values(
                created_at=utcnow(), account_id=account_id, action=action[:32], requested=requested[:32],
                source=source[:32], risk=risk, policy_version=(policy_version or None) and policy_version[:100],
                note=note, evidence=plain))

    def history(self, account_id: int) -> list[dict[str, Any]]:
        """An account's actions, oldest first."""
        stmt = (select(AccountAction.__table__).where(AccountAction.account_id == account_id)
                .order_by(AccountAction.id))
        with self.engine.connect() as conn:
            return [_action_dict(r) for r in conn.execute(stmt).all()]

    def since(self, after_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Every account's actions with id above `after_id`, oldest first (how replicas follow each other)."""
        stmt = (select(AccountAction.__table__).where(AccountAction.id > after_id).order_by(AccountAction.id)
                .limit(limit))
        with self.engine.connect() as conn:
            return [_action_dict(r) for r in conn.execute(stmt).all()]

    def last_id(self) -> int:
        """The newest action's id (0 if there is none)."""
        with self.engine.connect() as conn:
            return int(conn.scalar(select(func.max(AccountAction.id))) or 0)

    def review_queue(self) -> list[dict[str, Any]]:
        """Accounts whose newest action came from the detector: each with that action, awaiting a person."""
        newest = select(func.max(AccountAction.id)).group_by(AccountAction.account_id)
        stmt = (select(AccountAction.__table__).where(AccountAction.id.in_(newest),
                                                       AccountAction.source == "detector")
                .order_by(AccountAction.risk.desc(), AccountAction.id))
        with self.engine.connect() as conn:
            return [_action_dict(r) for r in conn.execute(stmt).all()]


def _action_dict(r: Any) -> dict[str, Any]:
    return {"id": r.id, "account_id": r.account_id, "time": r.created_at.isoformat(), "action": r.action,
            "requested": r.requested, "source": r.source, "risk": r.risk, "policy_version": r.policy_version,
            "note": r.note, "evidence": r.evidence}


class UnknownOperatorAction(StillwatchError):
    """An operator action that does not exist, or lacks what it needs (a block's reason, a throttle's rate)."""


# What each manual action changes on the account; `clear` undoes everything at once.
OPERATOR_ACTIONS: dict[str, dict[str, Any]] = {
    "block": {"blocked": True},
    "unblock": {"blocked": False},
    "degrade": {"degraded": True},
    "undegrade": {"degraded": False},
    "hide_reasoning": {"hide_reasoning": True},
    "show_reasoning": {"hide_reasoning": False},
    "throttle": {},
    "unthrottle": {"throttle_rpm": None},
    "clear": {"blocked": False, "degraded": False, "hide_reasoning": False, "throttle_rpm": None},
    "confirm": {},  # the detector's action stands; the account leaves the review queue
}
STATE_FIELDS = ("blocked", "block_reason", "degraded", "hide_reasoning", "throttle_rpm")


def operator_action(store: AccountStore, name: str, action: str, note: str | None = None,
                    reason: str | None = None, rpm: int | None = None) -> dict[str, Any]:
    """Apply one manual action to account `name` and keep it, with its note and the state before, in the
    account's history. Returns the account with its history."""
    if action not in OPERATOR_ACTIONS:
        raise UnknownOperatorAction(f"unknown action {action!r}; choose from {', '.join(OPERATOR_ACTIONS)}")
    before = store.get_account(name)
    change = OPERATOR_ACTIONS[action]
    if change.get("blocked") is True:
        store.block(name, reason or note or "blocked by an operator")
    elif change.get("blocked") is False and before["blocked"]:
        store.unblock(name)
    if "degraded" in change:
        store.set_degraded(name, change["degraded"])
    if "hide_reasoning" in change:
        store.set_hide_reasoning(name, change["hide_reasoning"])
    if action == "throttle":
        if rpm is None:
            raise UnknownOperatorAction("a throttle needs its rate: requests per minute")
        store.set_throttle(name, rpm)
    elif "throttle_rpm" in change:
        store.set_throttle(name, None)
    evidence = {"before": {k: before.get(k) for k in STATE_FIELDS}}
    if rpm is not None:
        evidence["throttle_rpm"] = rpm
    if reason:
        evidence["reason"] = reason
    ActionLog(store.engine).record(before["id"], action, action, "operator", evidence, note=note)
    return account_with_history(store, name)


def account_with_history(store: AccountStore, name: str) -> dict[str, Any]:
    """One account's state and its action history with evidence (UnknownAccount if there is none)."""
    account = store.get_account(name)
    return {**account, "actions": ActionLog(store.engine).history(account["id"])}
