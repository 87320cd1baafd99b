"""`stillwatch teach`, `eval`, `tasks` and `presets`: the built-in world."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)


def teach(
    out: Path = typer.Option(..., "--out", help="Model directory to write (resumes if a run was interrupted)."),
    preset: str = typer.Option("default", "--preset", help="Teacher size: default (the shipped teacher's recipe, "
                               "about 6 minutes on 2 cores) or tiny (tests: add and story, about a minute)."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation and data."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Override the preset's number of steps."),
    task: Optional[list[str]] = typer.Option(None, "--task", help="Train on these tasks only (repeatable; default: "
                                             "the preset's own)."),
    eval_n: int = typer.Option(200, "--eval-n", min=1, help="Held-out prompts per task for the model card."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any task ends below the preset's target."),
) -> None:
    """Train the built-in teacher on the built-in tasks, with checkpoints and resume; judge it against its targets."""
    from stillwatch.redact import command_line
    from stillwatch.tasks import get_tasks
    from stillwatch.teach import teach as run_teach

    if task:
        get_tasks(task)  # fail fast on an unknown task
    card = run_teach(out, preset=preset, seed=seed, steps=steps, task_names=task, eval_n=eval_n,
                     command=command_line(program="stillwatch"))
    if not card:  # a non-main process of a torchrun launch: the main one reports
        return
    table = Table(title=f"teacher {out} ({card['parameters']:,} parameters, {card['train']['seconds']:.0f} s)")
    for col in ("task", "accuracy", "target"):
        table.add_column(col, justify="left" if col == "task" else "right")
    missed = card["below_target"]
    for name, acc in card["accuracy"].items():
        mark = " [bold red]below target[/]" if name in missed else ""
        table.add_row(name, f"{acc:.1%}{mark}", f"{card['targets'][name]:.0%}")
    Console().print(table)
    if missed:
        console.print(f"[bold red]this teacher is not competent:[/] {', '.join(missed)} below the {preset} preset's "
                      f"target; train longer (--steps) or with another --seed")
        if strict:
            raise typer.Exit(1)


def eval_(
    model: Optional[Path] = typer.Option(None, "--model", help="Model directory to evaluate."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Or an OpenAI-compatible base URL."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Key for --endpoint."),
    served_model: str = typer.Option("stillwatch", "--served-model", help="Model name at --endpoint."),
    task: Optional[list[str]] = typer.Option(None, "--task", help="Task to evaluate (repeatable; default all)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Reference model directory for retention."),
    n: int = typer.Option(200, "--n", min=1, help="Held-out prompts per task."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write machine-readable results here."),
) -> None:
    """Accuracy per task, valid rate, parameters, throughput and latency; retention against --reference."""
    from stillwatch.cli.paths import check_writable_file
    from stillwatch.errors import ConfigError
    from stillwatch.evaluate import compare, evaluate
    from stillwatch.redact import redact, redact_url
    from stillwatch.tasks import TASK_NAMES, get_tasks
    from stillwatch.teachers import open_teacher

    if (model is None) == (endpoint is None):
        raise ConfigError("give exactly one of --model DIR or --endpoint URL")
    tasks = get_tasks(task or list(TASK_NAMES))
    if json_out is not None:
        check_writable_file(json_out)  # before the evaluation, not after it
    subject = open_teacher(model_dir=model, endpoint=endpoint, api_key=api_key, model_name=served_model)
    report = evaluate(subject, tasks, n=n, progress=True)
    comparison = None
    if reference is not None:
        comparison = compare(report, evaluate(open_teacher(model_dir=reference), tasks, n=n, progress=True))
    _print_eval(redact_url(str(model or endpoint)), report, comparison)
    if json_out is not None:
        slim = {**report, "tasks": {k: {kk: vv for kk, vv in v.items() if kk != "answers"}
                                    for k, v in report["tasks"].items()}}
        results = redact({"model": str(model or endpoint), "report": slim,
                          "reference": str(reference) if reference else None, "comparison": comparison}, [api_key])
        json_out.write_text(json.dumps(results, indent=2) + "\n")


def _print_eval(label: str, report: dict, comparison: dict | None) -> None:
    params = report.get("parameters")
    table = Table(title=f"{label}" + (f" ({params:,} parameters)" if params else ""))
    for col in ("task", "kind", "accuracy / valid", "retention", "agreement"):
        table.add_column(col, justify="left" if col in ("task", "kind") else "right")
    for name, row in report["tasks"].items():
        cmp = (comparison or {}).get("tasks", {}).get(name, {})
        ret, agr = cmp.get("retention"), cmp.get("agreement")
        table.add_row(name, row["kind"], f"{row['accuracy']:.1%}", "" if ret is None else f"{ret:.1%}",
                      "" if agr is None else f"{agr:.1%}")
    out = Console()
    out.print(table)
    shape = report.get("throughput", {})
    where = (f" (batch {shape['batch']} x {shape['new_tokens']} new tokens)" if shape.get("method") == "fixed-length"
             else " (evaluation requests)")
    out.print(f"throughput {report['tokens_per_s']:.0f} tokens/s{where}, latency {report['latency_ms']:.1f} ms per completion")
    if comparison:
        if "parameter_ratio" in comparison:
            out.print(f"parameter ratio {comparison['parameter_ratio']:.3f} (1/{1 / comparison['parameter_ratio']:.1f})")
        if "throughput_speedup" in comparison:
            out.print(f"throughput speed-up {comparison['throughput_speedup']:.2f}x over the reference")


def tasks_() -> None:
    """List the built-in tasks with one example each."""
    from stillwatch.tasks import TASK_NAMES, examples, get_task

    table = Table(title="built-in tasks")
    for col in ("task", "kind", "prompt", "reference completion"):
        table.add_column(col)
    for name in TASK_NAMES:
        t = get_task(name)
        ex = examples(t, 1, 0)[0]
        table.add_row(name, t.kind, ex.prompt.strip(), ex.trace)
    Console().print(table)


def presets() -> None:
    """List model size presets with their parameter counts."""
    from dataclasses import asdict

    from stillwatch.models import PRESETS, build_model, count_parameters
    from stillwatch.tokenizer import TOKENIZERS

    tokenizers = {kind: TOKENIZERS[kind]() for kind in sorted({p.tokenizer for p in PRESETS.values()})}
    table = Table(title="model presets")
    for col in ("preset", "parameters", "shape"):
        table.add_column(col)
    for name, p in PRESETS.items():  # each counted on its own tokenizer's vocabulary
        table.add_row(name, f"{count_parameters(build_model(p, tokenizers[p.tokenizer])):,}", str(asdict(p)))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the core commands."""
    app.command("teach")(teach)
    app.command("eval")(eval_)
    app.command("tasks")(tasks_)
    app.command("presets")(presets)
    app.command("demo")(demo)


def demo(
    workdir: Path = typer.Option(Path("runs/demo"), "--workdir", help="Where the demo keeps its teacher and its run."),
    preset: str = typer.Option("default", "--preset", help="Teacher preset: default (the shipped teacher, no "
                               "training) or tiny (trained here in about a minute, then reused)."),
    quick: bool = typer.Option(False, "--quick", help="Smallest sizes (a smoke run; effects may not show)."),
    seed: int = typer.Option(0, "--seed", help="Seed for training, prompts and sampling."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the summary as JSON here."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Play the whole story on the embedded defaults: teacher, gateway, harvest, student, block, proof.

    No GPU, no internet: every server binds 127.0.0.1 and is shut down at the end.

    The default preset uses the shipped teacher; a tiny teacher is trained into WORKDIR/teacher-tiny and reused.
    WORKDIR/run is replaced on every run.

    Exit code 1 when an act did not show its effect.
    """
    from stillwatch.demo import run_demo

    result = run_demo(workdir, preset=preset, quick=quick, seed=seed, progress=progress, json_out=json_out)
    if not result["passed"]:
        raise SystemExit(1)  # typer.Exit would be swallowed by main()'s standalone_mode=False
