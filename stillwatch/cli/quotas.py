"""`stillwatch quotas set|show|clear`: the quotas in the database, changed at runtime (every replica reads
them on each request, so a change holds on the next one; no restart)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from stillwatch.cli.accounts import DB_HELP, _engine

quotas_app = typer.Typer(help="Show and change quotas at runtime (per account, per key, or the default).",
                         no_args_is_help=True)

LIMIT_HELP = 'In the `limits` notation: "600/minute", "10/second;1000/day" or "unlimited".'


def _scope(default: bool, account: Optional[str], key: Optional[str]) -> tuple[str, str]:
    from stillwatch.errors import ConfigError

    given = [(s, v) for s, v in (("default", "" if default else None), ("account", account), ("key", key))
             if v is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --default, --account NAME or --key KEY_ID")
    return given[0]


def _show(view: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view))
        return
    where = view["scope"] + (f" {view['subject']}" if view["subject"] else "")
    print(f"{where}: " + ", ".join(f"{k} {v}" for k, v in view["effective"].items())
          + ("" if view["stored"] else " (all inherited)"))


@quotas_app.command("set")
def quotas_set(
    default: bool = typer.Option(False, "--default", help="The limits of every account without its own."),
    account: Optional[str] = typer.Option(None, "--account", help="One account's limits."),
    key: Optional[str] = typer.Option(None, "--key", help="One key's own limits (its id, after `sw-`)."),
    requests: Optional[str] = typer.Option(None, "--requests", help="Requests per window. " + LIMIT_HELP),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Prompt + completion tokens per window."),
    key_requests: Optional[str] = typer.Option(None, "--key-requests",
                                               help="Requests per window for each key of the account."),
    key_tokens: Optional[str] = typer.Option(None, "--key-tokens", help="Tokens per window for each key."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Set limits (unset options keep theirs); every replica applies them from the next request on."""
    from stillwatch.guard.accounts import AccountStore
    from stillwatch.guard.admin_quotas import quota_view
    from stillwatch.guard.quotas import QuotaStore

    scope, subject = _scope(default, account, key)
    engine = _engine(db)
    store, quotas = AccountStore(engine), QuotaStore(engine)
    quota_view(quotas, store, scope, subject)  # an unknown account or key is refused before anything is written
    quotas.set(scope, subject, requests=requests, tokens=tokens, key_requests=key_requests, key_tokens=key_tokens)
    _show(quota_view(quotas, store, scope, subject), as_json)


@quotas_app.command("show")
def quotas_show(
    default: bool = typer.Option(False, "--default", help="The default limits."),
    account: Optional[str] = typer.Option(None, "--account", help="One account's limits in force."),
    key: Optional[str] = typer.Option(None, "--key", help="One key's limits in force."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """The limits in force for an account, a key or the default; with no option, every stored row."""
    from stillwatch.guard.accounts import AccountStore
    from stillwatch.guard.admin_quotas import quota_view
    from stillwatch.guard.quotas import QuotaStore

    engine = _engine(db, write=False)
    store, quotas = AccountStore(engine), QuotaStore(engine)
    if not default and account is None and key is None:
        rows = quotas.rows()
        if as_json:
            for row in rows:
                print(json.dumps(row))
            return
        _show(quota_view(quotas, store, "default"), False)
        for row in rows:
            if row["scope"] != "default":
                _show(quota_view(quotas, store, row["scope"], row["subject"]), False)
        return
    _show(quota_view(quotas, store, *_scope(default, account, key)), as_json)


@quotas_app.command("clear")
def quotas_clear(
    default: bool = typer.Option(False, "--default", help="Back to the built-in default limits."),
    account: Optional[str] = typer.Option(None, "--account", help="The account inherits the default again."),
    key: Optional[str] = typer.Option(None, "--key", help="The key inherits its account's limits again."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """Remove a stored row, so that its scope inherits again."""
    from stillwatch.guard.accounts import AccountStore
    from stillwatch.guard.admin_quotas import quota_view
    from stillwatch.guard.quotas import QuotaStore

    scope, subject = _scope(default, account, key)
    engine = _engine(db)
    store, quotas = AccountStore(engine), QuotaStore(engine)
    quotas.clear(scope, subject)
    _show(quota_view(quotas, store, scope, subject), False)


def register(app: typer.Typer) -> None:
    """Add `quotas` to the app."""
    app.add_typer(quotas_app, name="quotas")
