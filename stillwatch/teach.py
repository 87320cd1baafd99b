"""Train the built-in teacher (or an answers-only / trace baseline) on the built-in tasks."""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from stillwatch.data import causal_lm_loss, encode_pairs
from stillwatch.errors import ModelDirError
from stillwatch.evaluate import evaluate
from stillwatch.models import build_model, count_parameters, get_preset, save_model
from stillwatch.runinfo import run_info
from stillwatch.tasks import TASK_NAMES, Task, get_tasks
from stillwatch.teachers.local import LocalTeacher
from stillwatch.tokenizer import load_tokenizer, train_tokenizer
from stillwatch.train import BatchFn, TrainConfig, train

RUN_DIR = "_run"
MIX_WEIGHTS = {"add": 2, "mul": 3, "chain": 3, "story": 2}
# Steps and batch size per teacher preset: `tiny` is for tests (about a minute), `default` for the demo.
SCHEDULES: dict[str, tuple[TrainConfig, int]] = {
    "tiny": (TrainConfig(steps=250, lr=4e-3, warmup=20, checkpoint_every=50), 32),
    # Small batches, many steps: the digit lookups are learnt per update, not per example.
    "default": (TrainConfig(steps=10000, lr=3e-3, warmup=100, checkpoint_every=500, log_every=50), 16),
}


def task_batches(tokenizer: PreTrainedTokenizerBase, tasks: Sequence[Task], batch_size: int, seed: int,
                 answers_only: bool = False) -> BatchFn:
    """Global batches of ground-truth examples, a pure function of the step.

    Tasks appear in proportion to MIX_WEIGHTS: addition is learnt first, multiplication and the chain last.
    """
    pattern = [t for t in tasks for _ in range(MIX_WEIGHTS.get(t.name, 2))]

    def make_batch(step: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        rng = random.Random(f"train:{seed}:{step}")
        rows = [pattern[(step * batch_size + i) % len(pattern)].example(rng) for i in range(batch_size)][rank::world]
        completions = [ex.answer_only if answers_only else ex.trace for ex in rows]
        return encode_pairs(tokenizer, [ex.prompt for ex in rows], completions)

    return make_batch


def _tokenizer_for(out: Path) -> PreTrainedTokenizerBase:
    """The run's tokenizer: reloaded when resuming so that token ids never change mid-run."""
    if (out / "tokenizer.json").is_file():
        return load_tokenizer(out)
    tokenizer = train_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    return tokenizer


def teach(out: str | Path, preset: str = "default", seed: int = 0, steps: int | None = None,
          task_names: Sequence[str] = TASK_NAMES, answers_only: bool = False, eval_n: int = 200,
          progress: bool = True, command: str | None = None, tokenizer_from: str | Path | None = None) -> dict:
    """Train a model of `preset` on the tasks, evaluate it, and write the model directory with its card."""
    out = Path(out)
    schedule, batch_size = SCHEDULES.get(preset, SCHEDULES["default"])
    get_preset(preset)
    config = TrainConfig(**{**asdict(schedule), "seed": seed, **({"steps": steps} if steps else {})})
    if out.exists() and any(out.iterdir()) and not (out / "tokenizer.json").is_file():
        raise ModelDirError(f"{out} exists and is not a stillwatch run; choose an empty or new directory")
    if tokenizer_from is not None:
        out.mkdir(parents=True, exist_ok=True)
        load_tokenizer(tokenizer_from).save_pretrained(out)
    # Under torchrun every process trains its share of each global batch; only the main one evaluates and writes.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    with accelerator.main_process_first():  # the main process trains and saves the tokenizer, the others load it
        tokenizer = _tokenizer_for(out)
    tasks = get_tasks(list(task_names))
    model = build_model(preset, tokenizer, seed=seed)
    result = train(model, task_batches(tokenizer, tasks, batch_size, seed, answers_only), causal_lm_loss, config,
                   out / RUN_DIR, progress=progress, description=f"teach {preset}", accelerator=accelerator)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return {}
    report = evaluate(LocalTeacher(model, tokenizer), tasks, n=eval_n, latency_samples=0, throughput_batch=0)
    card = {
        "kind": "stillwatch-teacher" if not answers_only else "stillwatch-answers-only",
        "preset": preset,
        "parameters": count_parameters(model),
        "tasks": list(task_names),
        "accuracy": {name: r["accuracy"] for name, r in report["tasks"].items()},
        "eval_n": eval_n,
        "train": {**result.to_dict(), "batch_size": batch_size, "config": asdict(config)},
        **run_info(seed, command),
    }
    card["train"].pop("losses")
    card["machine"]["processes"] = accelerator.num_processes
    save_model(model, tokenizer, out, card)
    shutil.rmtree(out / RUN_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()
    return card
