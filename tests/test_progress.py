"""Progress off a terminal: plain lines every few seconds, so a CI log or `nohup` shows a long run moving."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from stillwatch.progress import LoggedProgress, progress_line

ROOT = Path(__file__).resolve().parents[1]


def test_lines_carry_step_fields_rate_and_eta_off_a_terminal() -> None:
    out = io.StringIO()
    with LoggedProgress(console=Console(file=out, width=200), interval=0.0) as bar:
        job = bar.add_task("teach tiny", total=10, loss="-")
        for step in range(4):
            bar.update(job, advance=1, loss=f"{1.0 / (step + 1):.3f}")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("teach tiny:")]
    assert len(lines) == 4
    assert lines[-1].startswith("teach tiny: 4/10 (40%)") and "loss 0.250" in lines[-1] and "ETA" in lines[-1]


def test_a_terminal_gets_the_bar_and_no_lines() -> None:
    out = io.StringIO()
    with LoggedProgress(console=Console(file=out, force_terminal=True, width=120), interval=0.0) as bar:
        job = bar.add_task("harvest", total=3)
        bar.update(job, advance=3)
    assert "harvest: 3/3" not in out.getvalue()


def test_unknown_totals_have_no_eta() -> None:
    with LoggedProgress(console=Console(file=io.StringIO()), disable=True) as bar:
        job = bar.add_task("harvest", total=None, rows=0)
        bar.update(job, advance=5, rows=5)
        line = progress_line(bar.tasks[0])
    assert line.startswith("harvest: 5 · rows 5") and "ETA" not in line


def test_teach_under_a_pipe_prints_progress_lines(tmp_path: Path) -> None:
    env = {**os.environ, "STILLWATCH_PROGRESS_INTERVAL": "0.5", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "stillwatch", "teach", "--preset", "tiny", "--steps", "40",
                           "--task", "story", "--eval-n", "4", "--out", str(tmp_path / "t")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("teach tiny: ")]
    assert lines, done.stderr[-2000:]
    assert "/40 (" in lines[-1] and "loss" in lines[-1] and "ETA" in lines[-1]
