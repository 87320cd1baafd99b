"""`stillwatch detect` (the offline detector over an audit database) and `stillwatch simulate` (seeded traffic
through a live gateway): thin commands over stillwatch.detect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer


def _cell(value: Any, width: int = 120) -> Any:
    from rich.text import Text

    # Reasons quote prompts and names, which clients chose: no markup, no control characters.
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return Text(text if len(text) <= width else text[:width - 1] + "…")


def detect_database(db: str, policy_file: Optional[Path] = None) -> dict[str, Any]:
    """Read every served audit record of `db`, run the detector, and grade each account with the policy."""
    from stillwatch.detect.policy import load_policy
    from stillwatch.guard.db import open_database
    from stillwatch.guard.detection import detect_database as detect_engine

    return detect_engine(open_database(db, migrate=False), load_policy(policy_file))


def detect_cmd(
    db: str = typer.Option(..., "--db", help="Audit database URL (sqlite:///stillwatch.db, postgresql://...)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every verdict with all signal "
                                            "scores to this JSON file."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Policy YAML (default: the built-in one)."),
    top: int = typer.Option(3, "--reasons", min=1, help="Reasons shown per account."),
) -> None:
    """The risk table: one line per account with its risk, the policy's action and the top reasons."""
    from rich.console import Console
    from rich.table import Table

    report = detect_database(db, policy)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    table = Table(title=f"stillwatch detect (policy {report['policy']})")
    for column in ("account", "risk", "action", "requests", "campaign", "reasons"):
        table.add_column(column)
    for a in report["accounts"]:
        reasons = "; ".join(f"{r['signal']} +{r['contribution']:.1f}: {r['explanation']}" for r in a["reasons"][:top])
        campaign = f"#{a['cluster']} ({a['cluster_size']})" if a["cluster"] else ""
        table.add_row(_cell(a["account"], 40), f"{a['risk']:.3f}", a["action"], str(a["requests"]), campaign,
                      _cell(reasons))
    Console(soft_wrap=True).print(table)
    acted = sum(a["action"] != "allow" for a in report["accounts"])
    print(f"{acted} of {len(report['accounts'])} accounts above allow")


def simulate_cmd(
    endpoint: str = typer.Option(..., "--endpoint", help="The gateway's base URL (http://127.0.0.1:PORT/v1); "
                                 "loopback only."),
    admin_key_file: Optional[Path] = typer.Option(None, "--admin-key-file", help="File holding the admin key, "
                                                  "to create the simulated accounts and keys."),
    seed: int = typer.Option(0, "--seed"),
    duration: float = typer.Option(60.0, "--duration", min=1.0, help="Seconds the traffic is spread over."),
    max_requests: int = typer.Option(20000, "--max-requests", min=1, help="Stop after this many requests."),
    honest: str = typer.Option("chat=20,app=2,eval=2,researcher=2", "--honest", help="Honest clients per profile."),
    attackers: str = typer.Option("bulk=1,slow=1,camouflage=1,paraphrase=1,elicit=1,diversity=1,underlimit=1",
                                  "--attackers", help="Attacker clients per profile."),
    campaign: int = typer.Option(0, "--campaign", min=0, help="Accounts in the campaign (0: none)."),
    concurrency: int = typer.Option(16, "--concurrency", min=1),
    model: Optional[str] = typer.Option(None, "--model", help="Model name (default: the gateway's first)."),
    prefix: str = typer.Option("sim", "--prefix", help="Account names start with this."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the per-account outcome to this file."),
) -> None:
    """Drive a live gateway with honest and attacker clients (official openai client, own X-Forwarded-For each)."""
    from stillwatch.detect.simulate import SimulationConfig, parse_counts, simulate

    config = SimulationConfig(endpoint=endpoint, seed=seed, duration=duration, max_requests=max_requests,
                              honest=parse_counts(honest), attackers=parse_counts(attackers),
                              campaign_accounts=campaign, concurrency=concurrency, model=model, prefix=prefix)
    admin_key = admin_key_file.read_text(encoding="utf-8").strip() if admin_key_file is not None else None
    outcome = simulate(config, admin_key)
    if json_out is not None:
        json_out.write_text(json.dumps(outcome, indent=1) + "\n", encoding="utf-8")
    totals = outcome["totals"]
    print(f"{totals['sent']} requests from {len(outcome['accounts'])} accounts in {totals['seconds']:.1f} s: "
          f"{totals['ok']} served, {totals['refused']} refused")


def register(app: typer.Typer) -> None:
    """Add `detect` and `simulate`."""
    app.command("detect")(detect_cmd)
    app.command("simulate")(simulate_cmd)
