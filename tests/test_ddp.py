"""A 2-process CPU DDP distill (torchrun, gloo) ends where 1 process on the same global batch ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from stillwatch.cli import main
from stillwatch.distill.run import DistillConfig, distill
from stillwatch.models import read_card

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "store.db"
    main(["harvest", "--teacher", str(tiny_teacher), "--task", "add", "--task", "mul", "--n", "12", "--out",
          str(path), "--logprobs", "4", "--max-tokens", "48", "--concurrency", "24", "--no-progress"])
    return path


def test_two_process_ddp_matches_one_process(store: Path, tmp_path: Path) -> None:
    args = ["--data", str(store), "--preset", "student-tiny", "--loss", "kd", "--steps", "6", "--batch-size", "8",
            "--lr", "3e-3", "--checkpoint-every", "4", "--seed", "3"]
    # --standalone picks a free rendezvous port: other test runs on this machine may hold the default one.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "stillwatch", "distill", *args, "--out", str(two)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = tmp_path / "one"
    distill(store, one, DistillConfig(loss="kd", steps=6, batch_size=8, lr=3e-3, checkpoint_every=4, seed=3),
            preset="student-tiny", progress=False)

    card_one, card_two = read_card(one), read_card(two)
    assert card_two["machine"]["processes"] == 2 and card_one["machine"]["processes"] == 1
    assert card_two["train"]["tokens"] == card_one["train"]["tokens"]  # the same global batches
    assert card_two["train"]["final_loss"] == pytest.approx(card_one["train"]["final_loss"], abs=1e-4)
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-4
    # The runs really trained: the weights differ from a fresh student of the same seed.
    from stillwatch.models import build_model
    from stillwatch.tokenizer import load_tokenizer

    fresh = build_model("student-tiny", load_tokenizer(one), seed=3).state_dict()
    assert max((a[k] - fresh[k]).abs().max().item() for k in a if k in fresh) > 1e-3


def test_teach_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    from stillwatch.teach import teach

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "stillwatch", "teach", "--preset", "tiny", "--steps", "6", "--task", "add",
                           "--eval-n", "4", "--out", str(two)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("accuracy") == 1  # only the main process reports
    one = tmp_path / "one"
    teach(one, preset="tiny", steps=6, task_names=["add"], eval_n=4, progress=False)
    card_one, card_two = read_card(one), read_card(two)
    assert (card_two["machine"]["processes"], card_one["machine"]["processes"]) == (2, 1)
    assert card_two["train"]["tokens"] == card_one["train"]["tokens"]
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert not (two / "_run").exists()
