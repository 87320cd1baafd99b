"""Progress that reaches whoever reads it: a live bar on a terminal, a plain line every few seconds elsewhere.

Rich draws nothing until the end when its console is not a terminal (a CI log, `nohup`, a pipe), so a long
`teach` would look hung. `LoggedProgress` is a rich `Progress` that, off a terminal, also prints one line per
task every `interval` seconds: what it is doing, how far it got, its fields (loss, rows), the rate and the ETA.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.progress import Progress, Task, TaskID

LOG_INTERVAL_S = 5.0
INTERVAL_ENV = "STILLWATCH_PROGRESS_INTERVAL"  # seconds between lines off a terminal


def log_interval() -> float:
    """Seconds between progress lines: STILLWATCH_PROGRESS_INTERVAL, or LOG_INTERVAL_S."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, LOG_INTERVAL_S)))
    except ValueError:
        return LOG_INTERVAL_S


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_line(task: Task) -> str:
    """One plain-text line for `task`: done/total, its fields, rate, elapsed time and ETA."""
    done = f"{task.completed:,.0f}"
    if task.total:
        done += f"/{task.total:,.0f} ({task.completed / task.total:.0%})"
    fields = " ".join(f"{name} {value}" for name, value in task.fields.items() if value not in ("", None))
    rate = task.finished_speed or task.speed
    parts = [f"{task.description}: {done}", fields, f"{rate:,.1f}/s" if rate else "",
             f"elapsed {_duration(task.elapsed)}", f"ETA {_duration(task.time_remaining)}" if task.total else ""]
    return " · ".join(p for p in parts if p)


class LoggedProgress(Progress):
    """A rich `Progress`; when its console is not a terminal, it also logs a line every `interval` seconds."""

    def __init__(self, *columns: Any, interval: float | None = None, **kwargs: Any):
        super().__init__(*columns, **kwargs)
        self.interval = log_interval() if interval is None else interval
        self._logging = not self.disable and not self.console.is_terminal
        self._last_line = time.monotonic()

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        """Update the task as rich does, then log it when a line is due."""
        super().update(task_id, **kwargs)
        if self._logging and time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            for task in self.tasks:
                self.console.print(progress_line(task), markup=False, highlight=False, soft_wrap=True)
