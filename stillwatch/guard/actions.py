"""Each account's action history: every automatic (detector) or manual action, with the evidence behind it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, insert, select

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
            rows = conn.execute(stmt).all()
        return [{"id": r.id, "time": r.created_at.isoformat(), "action": r.action, "requested": r.requested,
                 "source": r.source, "risk": r.risk, "policy_version": r.policy_version, "note": r.note,
                 "evidence": r.evidence} for r in rows]


def account_with_history(store: AccountStore, name: str) -> dict[str, Any]:
    """One account's state and its action history with evidence (UnknownAccount if there is none)."""
    account = store.get_account(name)
    return {**account, "actions": ActionLog(store.engine).history(account["id"])}
