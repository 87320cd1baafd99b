"""What every result records about how it was made: command, git commit, seed and machine."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from stillwatch.redact import command_line, redact_text


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current commit of the checkout, with `+dirty` when the tree has changes, or None outside git."""
    try:
        here = cwd or Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (commit + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    """The machine a result was measured on."""
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_info(seed: int | None = None, command: str | None = None) -> dict:
    """Command (redacted), commit, seed and machine, for any results file or model card."""
    return {"command": redact_text(command) if command else command_line(), "git_commit": git_commit(),
            "seed": seed, "machine": machine()}
