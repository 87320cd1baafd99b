"""`stillwatch elicit score` and `elicit rescore`: thin commands over stillwatch.detect.elicit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

elicit_app = typer.Typer(help="Score prompts for reasoning elicitation, prompt extraction and injection.",
                         no_args_is_help=True)


def _preview(prompt: object, width: int = 60) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def score_cmd(
    text: Optional[str] = typer.Option(None, "--text", help="One prompt to score."),
    file: Optional[Path] = typer.Option(None, "--file", help="JSONL: one prompt per line (an object with "
                                        "prompt/messages/text, a message list, or a string)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every result to this JSON file "
                                            "('-' for stdout instead of the table)."),
) -> None:
    """Score prompts: per-category scores, the combined score, the verdict and the rules that fired."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from stillwatch.detect.elicit import load_classifier, read_prompts
    from stillwatch.errors import ConfigError

    if (text is None) == (file is None):
        raise ConfigError("give exactly one of --text TEXT or --file FILE.jsonl")
    prompts = [text] if text is not None else read_prompts(file)
    clf = load_classifier()
    results = [{"index": i, **clf.score(p)} for i, p in enumerate(prompts)]
    if json_out is not None:
        doc = json.dumps({"model": clf.version, "threshold": clf.threshold, "results": results},
                         ensure_ascii=False, indent=1)
        if str(json_out) == "-":
            print(doc)
            return
        try:
            json_out.write_text(doc + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {json_out}: {str(exc).splitlines()[0]}") from None
    table = Table(title=f"elicitation scores (model {clf.version}, threshold {clf.threshold:.3f})")
    for column in ("#", "score", "verdict", "category", "rules", "prompt"):
        table.add_column(column)
    for prompt, r in zip(prompts, results):
        # plain strings, never markup: prompts are hostile
        table.add_row(str(r["index"]), f"{r['score']:.3f}", "FLAG" if r["flagged"] else "ok", r["category"] or "",
                      Text(", ".join(h["rule"] for h in r["rule_hits"])), Text(_preview(prompt)))
    Console(markup=False, highlight=False).print(table)
    flagged = sum(r["flagged"] for r in results)
    print(f"{flagged} of {len(results)} flagged")


def rescore_cmd(
    db: str = typer.Option(..., "--db", help="Audit database URL (sqlite:///stillwatch.db, postgresql://...)."),
    missing_only: bool = typer.Option(False, "--missing-only", help="Only records that have no scores yet."),
) -> None:
    """Score every served audit record's prompt again with the packaged model and store the scores (after a
    model update, or for records the online detector never saw)."""
    from sqlalchemy import func, select

    from stillwatch.guard.audit import served_page, store_elicit
    from stillwatch.guard.db import open_database
    from stillwatch.guard.detection import score_for_audit
    from stillwatch.guard.tables import AuditRecord

    engine = open_database(db, migrate=True)  # it writes: an older database gains the scores' column
    with engine.connect() as conn:
        total = int(conn.scalar(select(func.count()).select_from(AuditRecord)) or 0)
    done = last = 0
    while True:
        rows = served_page(engine, last, 1000)
        if not rows:
            break
        last = rows[-1]["id"]
        scores = {r["id"]: score_for_audit(r["prompt"]) for r in rows
                  if r["prompt"] is not None and not (missing_only and r["elicit"] is not None)}
        store_elicit(engine, scores)
        done += sum(v is not None for v in scores.values())
    print(f"scored {done} served records (of {total} audit records)")


def register(app: typer.Typer) -> None:
    """Add `elicit score` and `elicit rescore`."""
    elicit_app.command("score")(score_cmd)
    elicit_app.command("rescore")(rescore_cmd)
    app.add_typer(elicit_app, name="elicit")
