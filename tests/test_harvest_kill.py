"""SIGKILL a real harvest subprocess mid-run, re-run the same command: no duplicate and no lost rows."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from stillwatch.harvest import HarvestStore, task_source

N_PROMPTS, SAMPLES = 120, 2


def _rows(db) -> dict[tuple[str, int], tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {(p, i): (text, created) for p, i, text, created in
                con.execute("SELECT prompt_id, sample_index, text, created_at FROM samples")}
    finally:
        con.close()


def _count(db) -> int:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_mid_harvest_then_resume(tmp_path, tiny_teacher):
    db = tmp_path / "store.db"
    command = [sys.executable, "-m", "stillwatch", "harvest", "--teacher", str(tiny_teacher), "--task", "add",
               "--n", str(N_PROMPTS), "--samples", str(SAMPLES), "--out", str(db), "--concurrency", "4",
               "--max-tokens", "8", "--logprobs", "2", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("STILLWATCH_WATERMARK_KEY", None)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while _count(db) < 16:  # two batches committed
            assert proc.poll() is None, f"harvest ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "harvest made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _rows(db)
    assert 16 <= len(before) < N_PROMPTS * SAMPLES, "the kill must land mid-run"

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = _rows(db)
    # zero lost completed rows: every row stored before the kill is still there, untouched (not redone)
    assert all(after.get(key) == value for key, value in before.items())
    # zero duplicates and nothing missing: exactly SAMPLES rows for every prompt of the task
    expected = {item.prompt_id for item in task_source(["add"], N_PROMPTS, 0)}
    assert len(after) == N_PROMPTS * SAMPLES
    assert {p for p, _ in after} == expected
    assert {i for _, i in after} == set(range(SAMPLES))
    with HarvestStore(db) as store:
        assert store.count() == N_PROMPTS * SAMPLES == len(list(store.iter_rows()))
    assert f"holds {N_PROMPTS * SAMPLES} rows" in rerun.stdout
