"""The scenario that `stillwatch demo` plays on the embedded defaults: no GPU, no internet, loopback only."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from stillwatch.evaluate import evaluate
from stillwatch.tasks import get_tasks
from stillwatch.teach import teach
from stillwatch.teachers.local import LocalTeacher


def run_demo(workdir: str | Path = "runs/demo", preset: str = "tiny", console: Console | None = None) -> dict:
    """Train the built-in teacher, evaluate it and print the table; returns the evaluation report."""
    console = console or Console()
    workdir = Path(workdir)
    teacher_dir = workdir / f"teacher-{preset}"
    console.rule(f"1. train the built-in {preset} teacher")
    if not (teacher_dir / "stillwatch_card.json").is_file():
        teach(teacher_dir, preset=preset, command=f"stillwatch demo (teach --preset {preset})")
    console.print(f"teacher at {teacher_dir}")
    console.rule("2. evaluate it on every built-in task")
    report = evaluate(LocalTeacher.from_dir(teacher_dir), get_tasks(), n=100)
    table = Table(title=f"{preset} teacher ({report['parameters']:,} parameters)")
    for col in ("task", "kind", "accuracy / valid"):
        table.add_column(col)
    for name, row in report["tasks"].items():
        table.add_row(name, row["kind"], f"{row['accuracy']:.1%}")
    console.print(table)
    console.print(f"throughput {report['tokens_per_s']:.0f} tokens/s, latency {report['latency_ms']:.1f} ms")
    return report
