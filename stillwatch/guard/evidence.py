"""An account's evidence as one self-contained bundle: its state, every action with its evidence, the audit
records those actions cite (by record hash, in full), a digest over all of its records, and the chain check.

Anyone holding only the bundle can recompute each cited record's hash from its fields (`verify_bundle`):
record_hash = SHA-256 of the canonical JSON `[prev_hash, *fields]`, fields in `CHAINED_FIELDS` order, with
prompt and completion entering through their SHA-256. The chain check says the database those records came
from was whole when the bundle was made.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import select

from stillwatch.guard.accounts import AccountStore
from stillwatch.guard.actions import account_with_history
from stillwatch.guard.audit import CHAINED_FIELDS, chain_hash, sha256_text, verify_chain
from stillwatch.guard.tables import AuditRecord, utcnow

FORMAT = "stillwatch-evidence/1"


def _cited_hashes(actions: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for action in actions:
        for example in (action.get("evidence") or {}).get("examples") or ():
            h = example.get("record_hash") if isinstance(example, dict) else None
            if isinstance(h, str) and len(h) == 64:
                seen.setdefault(h)
    return list(seen)


def _record(row: Any) -> dict[str, Any]:
    r = row._mapping
    out = {name: r[name] for name in CHAINED_FIELDS}
    out["created_at"] = r["created_at"].isoformat(timespec="microseconds")
    out.update(id=r["id"], prompt=r["prompt"], completion=r["completion"], prev_hash=r["prev_hash"],
               record_hash=r["record_hash"], elicit=r["elicit"])
    return out


def records_digest(hashes: list[str]) -> str:
    """SHA-256 over an account's record hashes in id order: the bundle commits to all of its traffic."""
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()


def evidence_bundle(store: AccountStore, name: str, verify: bool = True) -> dict[str, Any]:
    """The bundle for account `name` (UnknownAccount if there is none)."""
    shown = account_with_history(store, name)
    actions = shown.pop("actions")
    cited = _cited_hashes(actions)
    table = AuditRecord.__table__
    with store.engine.connect() as conn:
        rows = conn.execute(select(table).where(table.c.record_hash.in_(cited)).order_by(table.c.id)).all() \
            if cited else []
        hashes = [h for (h,) in conn.execute(select(table.c.record_hash).where(
            table.c.account_id == shown["id"], table.c.record_hash.is_not(None)).order_by(table.c.id))]
    records = [_record(r) for r in rows]
    found = {r["record_hash"] for r in records}
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "generated_at": utcnow().isoformat(),
        "account": shown,
        "usage": store.usage(name),
        "actions": actions,
        "records": records,
        "all_records": {"count": len(hashes), "first": hashes[0] if hashes else None,
                        "last": hashes[-1] if hashes else None, "digest": records_digest(hashes)},
        "hash_rule": {"algorithm": "sha256", "fields": ["prev_hash", *CHAINED_FIELDS],
                      "texts": "prompt and completion enter through prompt_sha256 and completion_sha256"},
        "missing": [h for h in cited if h not in found],
    }
    if verify:
        report = verify_chain(store.engine)
        bundle["chain"] = {"ok": report.ok, "checked": report.checked, "unchained": report.unchained,
                           "broken_id": report.broken_id, "problem": report.problem}
    return bundle


def verify_bundle(bundle: dict[str, Any]) -> list[str]:
    """Problems found by recomputing every cited record's hash from the bundle alone; [] when all hold."""
    problems = []
    if bundle.get("format") != FORMAT:
        problems.append(f"not a {FORMAT} bundle")
    for record in bundle.get("records") or ():
        try:
            row = {**record, "created_at": datetime.fromisoformat(record["created_at"])}
            if chain_hash(row, record["prev_hash"]) != record["record_hash"]:
                problems.append(f"record {record.get('id')}: its fields do not match its hash")
            for text, digest in (("prompt", "prompt_sha256"), ("completion", "completion_sha256")):
                value = record.get(text)
                if value is not None and "\ufffd" not in value and sha256_text(value) != record.get(digest):
                    problems.append(f"record {record.get('id')}: its {text} does not match {digest}")
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"record {record.get('id') if isinstance(record, dict) else '?'}: unreadable ({exc})")
    for h in bundle.get("missing") or ():
        problems.append(f"cited record {h[:12]}… is not in the audit log")
    chain = bundle.get("chain")
    if isinstance(chain, dict) and not chain.get("ok", True):
        problems.append(f"the audit chain was broken at record {chain.get('broken_id')}: {chain.get('problem')}")
    return problems

