"""`stillwatch keys`, `stillwatch accounts` and `stillwatch audit`: the admin operations on the command line.

Each command takes `--db URL`, by default the database `stillwatch serve` uses (`STILLWATCH_DB`, else
sqlite:///stillwatch.db). Commands that write bring its schema up to date first, so a key can be made before
the first serve; commands that only read (`keys list`, `accounts list`, `accounts usage`, `audit`) never
migrate, never create a database file, and say so when the database is missing or behind.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
accounts_app = typer.Typer(help="List and create accounts; act on them (block, degrade, hide reasoning, "
                                "throttle, clear); the review queue, evidence and usage.",
                           no_args_is_help=True)

DB_HELP = "Database URL (default: STILLWATCH_DB, else the one `stillwatch serve` uses)."
err = Console(stderr=True)


def _engine(db: Optional[str], write: bool = True):  # -> sqlalchemy.Engine
    from stillwatch.guard.db import open_database
    from stillwatch.guard.settings import GuardSettings

    return open_database(db or GuardSettings().db_url, migrate=write)


def _store(db: Optional[str], write: bool = True):  # -> AccountStore
    from stillwatch.guard.accounts import AccountStore

    return AccountStore(_engine(db, write))


def _print_rows(rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    Console(soft_wrap=True).print(table)


def _cell(value: Any) -> Text:
    # Values can come from clients (names, reasons, prompts): no markup, no control characters.
    text = "" if value is None else str(value)
    return Text("".join(ch if ch.isprintable() else "?" for ch in text))


# --- keys ---------------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(account: str = typer.Option(..., "--account", help="Account that owns the key (created if new)."),
                count: int = typer.Option(1, "--count", min=1, max=100_000,
                                          help="How many keys to make, in one transaction (one per line)."),
                db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Create keys and print them on stdout (only there, and only now: they are stored as hashes)."""
    made = _store(db).create_keys(account, count)
    if count == 1:
        err.print(f"created key {made[0][0]} for account {account}; it is shown once, store it now")
    else:
        err.print(f"created {count} keys for account {account}; they are shown once, store them now")
    sys.stdout.write("".join(raw + "\n" for _, raw in made))


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key id (the part after `sw-`)."),
                db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Revoke a key for good: the next request with it gets 401."""
    _store(db).revoke_key(key_id)
    err.print(f"revoked key {key_id}")


@keys_app.command("list")
def keys_list(account: Optional[str] = typer.Option(None, "--account", help="Only this account's keys."),
              as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
              db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Key ids, owners and dates (never the keys themselves)."""
    rows = _store(db, write=False).list_keys(account)
    _print_rows(rows, ["key_id", "account", "created_at", "revoked_at"], "keys", as_json)


# --- accounts -----------------------------------------------------------------------------------------
@accounts_app.command("list")
def accounts_list(as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
                  db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Every account with its state."""
    rows = _store(db, write=False).list_accounts()
    _print_rows(rows, ["name", "blocked", "block_reason", "degraded", "active_keys", "created_at"], "accounts",
                as_json)


@accounts_app.command("create")
def accounts_create(name: str = typer.Argument(..., help="Account name."),
                    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Create an account without a key."""
    _store(db).create_account(name)
    err.print(f"created account {name}")


NOTE_HELP = "Why: kept with the action in the account's history."


def _operator(name: str, action: str, db: Optional[str], note: Optional[str], **extra: Any) -> None:
    from stillwatch.guard.actions import operator_action

    operator_action(_store(db), name, action, note, **extra)
    err.print(f"{action.replace('_', ' ')}: {name}")
    if action == "degrade":
        err.print("note: only a gateway serving a local teacher with --antidistill-proxy can degrade; any other "
                  "refuses this account (403 account_restricted) rather than serve it clean traces", soft_wrap=True)


@accounts_app.command("block")
def accounts_block(name: str = typer.Argument(..., help="Account name."),
                   reason: str = typer.Option(..., "--reason", help="Why (shown to the client if the policy allows)."),
                   note: Optional[str] = typer.Option(None, "--note", help=NOTE_HELP),
                   db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Block an account: all its keys get 403 from the next request on, on every replica."""
    _operator(name, "block", db, note, reason=reason)


@accounts_app.command("throttle")
def accounts_throttle(name: str = typer.Argument(..., help="Account name."),
                      rpm: int = typer.Option(..., "--rpm", min=1, help="Requests per minute allowed while throttled."),
                      note: Optional[str] = typer.Option(None, "--note", help=NOTE_HELP),
                      db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Cap an account's requests per minute below its quota."""
    _operator(name, "throttle", db, note, rpm=rpm)


def _manual(action: str, summary: str) -> None:
    def command(name: str = typer.Argument(..., help="Account name."),
                note: Optional[str] = typer.Option(None, "--note", help=NOTE_HELP),
                db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
        _operator(name, action, db, note)

    command.__doc__ = summary
    accounts_app.command(action.replace("_", "-"))(command)


for _action, _summary in (
        ("unblock", "Lift a block."),
        ("degrade", "Serve the account with antidistillation sampling (poisoned traces) instead of blocking it."),
        ("undegrade", "Back to normal sampling."),
        ("hide_reasoning", "Serve the account final answers without their reasoning traces."),
        ("show_reasoning", "Serve the account reasoning traces again."),
        ("unthrottle", "Lift a throttle."),
        ("clear", "Lift every restriction after review; the detector forgets the evidence before now."),
        ("confirm", "Uphold the detector's action after review: the account leaves the review queue.")):
    _manual(_action, _summary)


@accounts_app.command("review")
def accounts_review(as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
                    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """The review queue: accounts whose newest action is the detector's, riskiest first."""
    from stillwatch.guard.actions import ActionLog

    store = _store(db, write=False)
    names = {a["id"]: a["name"] for a in store.list_accounts()}
    rows = []
    for a in ActionLog(store.engine).review_queue():
        ev = a["evidence"] or {}
        rows.append({"account": names.get(a["account_id"]), "time": a["time"][:19], "action": a["action"],
                     "risk": None if a["risk"] is None else round(a["risk"], 3),
                     "reasons": "; ".join(r["signal"] for r in ev.get("reasons", [])[:3]),
                     "linked": len(ev.get("linked_accounts", [])), "note": a["note"]})
    _print_rows(rows, ["account", "time", "action", "risk", "reasons", "linked", "note"],
                "review queue (clear or confirm each)", as_json)


@accounts_app.command("evidence")
def accounts_evidence(name: str = typer.Argument(..., help="Account name."),
                      out: Path = typer.Option(..., "--out", help="Where to write the bundle (JSON)."),
                      db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Export a self-contained evidence bundle: the account, its actions and the audit records they cite."""
    from stillwatch.cli.paths import check_writable_file
    from stillwatch.guard.evidence import evidence_bundle, verify_bundle

    check_writable_file(out)
    bundle = evidence_bundle(_store(db, write=False), name)
    out.write_text(json.dumps(bundle, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    problems = verify_bundle(bundle)
    err.print(f"wrote {out}: {len(bundle['actions'])} actions, {len(bundle['records'])} cited records, "
              f"{bundle['all_records']['count']} records in all; "
              + ("every cited hash and the chain hold" if not problems else f"PROBLEMS: {'; '.join(problems)}"),
              soft_wrap=True)


@accounts_app.command("show")
def accounts_show(name: str = typer.Argument(..., help="Account name."),
                  as_json: bool = typer.Option(False, "--json", help="Print the account, its actions and their "
                                               "evidence as JSON."),
                  db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """An account's state and its action history, each action with the evidence it rests on."""
    from stillwatch.guard.actions import account_with_history

    shown = account_with_history(_store(db, write=False), name)
    if as_json:
        print(json.dumps(shown, indent=1))
        return
    state = {k: v for k, v in shown.items() if k != "actions"}
    _print_rows([{"field": k, "value": v} for k, v in state.items()], ["field", "value"], f"account {name}", False)
    rows = []
    for a in shown["actions"]:
        ev = a["evidence"] or {}
        reasons = "; ".join(f"{r['signal']} +{r['contribution']:.1f}" for r in ev.get("reasons", [])[:3])
        rows.append({"time": a["time"][:19], "action": a["action"], "requested": a["requested"],
                     "source": a["source"], "risk": "" if a["risk"] is None else f"{a['risk']:.3f}",
                     "policy": a["policy_version"], "reasons": reasons,
                     "linked": len(ev.get("linked_accounts", [])), "note": a["note"]})
    _print_rows(rows, ["time", "action", "requested", "source", "risk", "policy", "reasons", "linked", "note"],
                "actions (--json for the full evidence)", False)


@accounts_app.command("usage")
def accounts_usage(name: str = typer.Argument(..., help="Account name."),
                   since: Optional[datetime] = typer.Option(None, "--since", help="ISO time (UTC if no zone)."),
                   as_json: bool = typer.Option(False, "--json", help="Print JSON."),
                   db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Requests, tokens and refusals of an account, from the audit log."""
    usage = _store(db, write=False).usage(name, since=_utc(since))
    if as_json:
        print(json.dumps(usage))
    else:
        _print_rows([{"field": k, "value": v} for k, v in usage.items()], ["field", "value"], f"usage of {name}",
                    False)


# --- audit --------------------------------------------------------------------------------------------
audit_app = typer.Typer(help="The audit trail; `audit verify` checks its hash chain.", invoke_without_command=True)


@audit_app.callback()
def audit(ctx: typer.Context,
          account: Optional[str] = typer.Option(None, "--account", help="Only this account."),
          limit: int = typer.Option(20, "--limit", min=1, max=100_000, help="Newest N records."),
          since: Optional[datetime] = typer.Option(None, "--since", help="ISO time (UTC if no zone)."),
          as_json: bool = typer.Option(False, "--json", help="Full records, one JSON object per line."),
          purge: bool = typer.Option(False, "--purge", help="Apply prompt retention now and say how many."),
          db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """The audit trail, newest first: who asked what, when, and what the guard decided."""
    from stillwatch.guard.audit import AuditLog

    if ctx.invoked_subcommand is not None:
        return
    from stillwatch.guard.settings import GuardSettings

    log = AuditLog(_engine(db, write=purge), GuardSettings())
    if purge:
        err.print(f"retention: blanked the texts of {log.purge()} records")
    rows = log.query(account=account, since=_utc(since), limit=limit)
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    for row in rows:  # prompts are hostile: one line, shortened, as Python literals (no terminal escapes)
        row["time"] = row["time"][:19]
        row["tokens"] = f"{row['prompt_tokens']}+{row['completion_tokens']}"
        row["prompt"] = repr((row["prompt"] or "")[:40])
    _print_rows(rows, ["id", "time", "account", "key_id", "endpoint", "status", "decision", "tokens", "prompt"],
                "audit", False)


@audit_app.command("verify")
def audit_verify(db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Recompute the audit log's hash chain; name the first broken record (exit 1) or say it holds."""
    from stillwatch.guard.audit import verify_chain

    report = verify_chain(_engine(db, write=False))
    if not report.ok:
        print(f"audit chain broken at record {report.broken_id}: {report.problem}", file=sys.stderr)
        raise typer.Exit(1)
    before = f" ({report.unchained} older records predate the chain)" if report.unchained else ""
    print(f"audit chain holds: {report.checked} records{before}")


def _utc(value: Optional[datetime]) -> Optional[datetime]:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def register(app: typer.Typer) -> None:
    """Add `keys`, `accounts` and `audit` to the app."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(accounts_app, name="accounts")
    app.add_typer(audit_app, name="audit")
