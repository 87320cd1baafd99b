"""The CLI contract: `teach` then `eval`, resume after SIGKILL, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "stillwatch"]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_teach_then_eval_with_reference(tmp_path: Path, tiny_teacher: Path) -> None:
    out = tmp_path / "teacher"
    done = run("teach", "--preset", "tiny", "--steps", "20", "--out", str(out), "--task", "add", "--task", "story",
               "--eval-n", "10")
    assert done.returncode == 0, done.stderr
    card = json.loads((out / "stillwatch_card.json").read_text())
    assert set(card["accuracy"]) == {"add", "story"}
    assert card["parameters"] > 0 and "teach" in card["command"]
    assert not (out / "_run").exists()
    # 20 steps teach nothing: the card and the table say so, and the exit code stays 0 without --strict
    assert card["targets"] == {"add": 0.9, "story": 0.9} and set(card["below_target"]) == {"add", "story"}
    assert card["competent"] is False
    assert "not competent" in done.stderr and "below target" in done.stdout
    report = tmp_path / "eval.json"
    done = run("eval", "--model", str(out), "--task", "add", "--n", "10", "--reference", str(tiny_teacher),
               "--json", str(report))
    assert done.returncode == 0, done.stderr
    data = json.loads(report.read_text())
    assert data["report"]["tasks"]["add"]["n"] == 10
    assert data["comparison"]["parameter_ratio"] == 1.0
    assert "agreement" in data["comparison"]["tasks"]["add"]
    assert "retention" in done.stdout
    # throughput is a fixed-length batched decode, whatever the models write
    assert data["report"]["throughput"]["method"] == "fixed-length" and data["report"]["tokens_per_s"] > 0
    assert data["comparison"]["throughput_speedup"] > 0 and "new tokens" in done.stdout


def test_strict_teach_exits_1_below_target(tmp_path: Path) -> None:
    done = run("teach", "--preset", "tiny", "--steps", "5", "--out", str(tmp_path / "t"), "--task", "story",
               "--eval-n", "4", "--strict")
    assert done.returncode == 1, done.stderr
    assert "story" in done.stderr and "not competent" in done.stderr and "Traceback" not in done.stderr


def test_interrupted_teach_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "teacher"
    args = [*CLI, "teach", "--preset", "tiny", "--steps", "120", "--out", str(out), "--task", "chain", "--eval-n", "10"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "_run" / "checkpoint" / "train_state.json"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = json.loads(state.read_text())["step"]
    assert 0 < saved < 120
    done = run("teach", "--preset", "tiny", "--steps", "120", "--out", str(out), "--task", "chain", "--eval-n", "10")
    assert done.returncode == 0, done.stderr
    card = json.loads((out / "stillwatch_card.json").read_text())
    assert card["train"]["resumed_from"] >= saved


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    cases = [
        ("eval", "--model", str(tmp_path / "missing")),
        ("eval", "--model", str(tmp_path), "--task", "nope"),
        ("teach", "--out", str(tmp_path / "t"), "--preset", "galactic"),
        ("teach", "--out", str(tmp_path / "t"), "--steps", "-3"),
        ("teach", "--no-such-flag"),
    ]
    for args in cases:
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stillwatch: error:"), (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_help_reads_well() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in ("teach", "eval"):
        assert command in done.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and "--out" in sub.stdout or "--model" in sub.stdout
