"""Write a `prove` report as JSON plus Markdown or HTML: verdict, method, p-values, scored tuples and controls."""

from __future__ import annotations

import html
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Literal

from stillwatch.redact import redact
from stillwatch.runinfo import git_commit


def _p(value: float | None, log10: float | None = None) -> str:
    if value is None:
        return "-"
    if value == 0.0 and log10 is not None:
        return f"10^{log10:.1f}"
    return f"{value:.3g}"


def markdown(report: dict) -> str:
    """The human-readable report (every value that came from a prompt or text is escaped in HTML, not here)."""
    t, c = report["test"], report["controls"]
    ev, keys = c["evidence_watermark"], c["wrong_keys"]
    lines = [
        f"# stillwatch prove: {report['verdict'].upper()}",
        "",
        f"**Suspect:** `{report['suspect']}` ({report['mode']} model)  ",
        f"**Evidence:** `{report['evidence']['source']}`"
        + (f", account `{report['evidence']['account']}`" if report["evidence"].get("account") else "")
        + f", {report['evidence']['texts']} served texts  ",
        f"**Watermark:** γ={report['watermark']['gamma']}, δ={report['watermark']['delta']}, "
        f"context width {report['watermark']['context_width']} ({report['watermark']['seeding']}), "
        f"key fingerprint `{report['watermark']['key_fingerprint']}`",
        "",
        f"**Verdict:** {report['verdict']}: {report['reason']}.",
        "",
        "## Result",
        "",
        "| scored tuples | green | green fraction | expected (γ) | z | p-value | log10 p |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {t['num_tuples_scored']} | {t['num_green']} | {t['green_fraction']:.3f} | {t['gamma']:.3f} | "
        f"{t['z_score']:.2f} | {_p(t['p_value'], t['log10_p_value'])} | {t['log10_p_value']:.2f} |",
        "",
        f"Positions examined: {t['positions']}; excluded: "
        + (", ".join(f"{k} {v}" for k, v in sorted(t["excluded"].items())) or "none") + ".",
        "",
        "## Method",
        "",
        report["method"],
        "",
        "## Controls",
        "",
        "| control | result | passed |",
        "|---|---|:-:|",
        f"| evidence carries the watermark | z = {ev['z_score']:.1f} over {ev['num_tokens_scored']} tokens of "
        f"{ev['texts']} texts | {'yes' if ev['passed'] else 'NO'} |",
        f"| same tuples under {keys['keys']} random keys | min p = {_p(keys['min_p_value'])} | "
        f"{'yes' if keys['passed'] else 'NO'} |",
    ]
    for ref in c["reference_models"]:
        lines.append(f"| reference model `{ref['model']}` | p = {_p(ref['p_value'], ref['log10_p_value'])} over "
                     f"{ref['num_tuples_scored']} tuples | {'yes' if ref['passed'] else 'NO'} |")
    if t["sample_tuples"]:
        lines += ["", "## First scored tuples", "", "| window | token | green |", "|---|---:|:-:|"]
        lines += [f"| {s['window']} | {s['token']} | {'G' if s['green'] else '-'} |" for s in t["sample_tuples"]]
    lines += ["", f"_Generated {report.get('created_at', '')} by stillwatch (commit {report.get('commit')})._", ""]
    return "\n".join(lines)


def to_html(report: dict) -> str:
    """The Markdown report wrapped as an escaped, self-contained HTML page."""
    body = html.escape(markdown(report))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>stillwatch prove</title></head>"
            f"<body><pre style='font-family: ui-monospace, monospace; white-space: pre-wrap'>{body}</pre></body></html>\n")


def write_report(report: dict, out: str | Path, fmt: Literal["md", "html"] = "md", command: str | None = None,
                 secrets: Iterable[str | None] = ()) -> dict[str, Path]:
    """Write report.json and report.md (or report.html) into `out`, redacted; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = redact({**report, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "commit": git_commit(), "command": command, "machine": platform.platform()}, secrets)
    paths = {"json": out / "report.json"}
    paths["json"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    if fmt == "html":
        paths["html"] = out / "report.html"
        paths["html"].write_text(to_html(report))
    else:
        paths["md"] = out / "report.md"
        paths["md"].write_text(markdown(report))
    return paths
