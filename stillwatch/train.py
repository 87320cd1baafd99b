"""The one training loop, on accelerate: teacher training and every distillation loss share it.

Batches are a pure function of (step, rank, world size), so a resumed run sees exactly the batches it
would have seen, and a 2-process DDP run splits the same global batch that 1 process trains on.
Losses return a (sum, count) pair and are normalised by the count over all ranks, which makes the
DDP gradient equal to the single-process one up to floating-point noise.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import get_cosine_schedule_with_warmup

from stillwatch.errors import ConfigError
from stillwatch.progress import LoggedProgress

Batch = dict[str, torch.Tensor]
BatchFn = Callable[[int, int, int], Batch]  # (step, rank, world) -> this rank's share of the global batch
LossFn = Callable[[torch.nn.Module, Batch, int], tuple[torch.Tensor, torch.Tensor]]  # -> (loss sum, count)

CHECKPOINT = "checkpoint"
STATE_FILE = "train_state.json"


@dataclass
class TrainConfig:
    """Optimisation settings for one run."""

    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.checkpoint_every < 1:
            raise ConfigError(f"impossible training settings: steps={self.steps} lr={self.lr} "
                              f"checkpoint_every={self.checkpoint_every}")


@dataclass
class TrainResult:
    """What a run did: steps, loss curve, time and tokens seen."""

    steps: int
    resumed_from: int
    seconds: float
    final_loss: float
    tokens: int
    losses: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def _checkpoint_dir(run_dir: Path) -> Path | None:
    for name in (CHECKPOINT, CHECKPOINT + ".old"):  # .old survives a crash in the middle of a swap
        if (run_dir / name / STATE_FILE).is_file():
            return run_dir / name
    return None


def _save_checkpoint(accelerator: Accelerator, run_dir: Path, state: dict) -> None:
    """Write the full training state to a fresh folder, then swap it in, so a kill never leaves half a checkpoint."""
    tmp, final, old = run_dir / (CHECKPOINT + ".tmp"), run_dir / CHECKPOINT, run_dir / (CHECKPOINT + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def train(model: torch.nn.Module, make_batch: BatchFn, loss_fn: LossFn, config: TrainConfig, run_dir: str | Path,
          *, progress: bool = True, description: str = "training",
          accelerator: Accelerator | None = None) -> TrainResult:
    """Train `model` for `config.steps` steps, checkpointing to `run_dir` and resuming from it when present."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    start, losses, tokens = 0, [], 0
    checkpoint = _checkpoint_dir(run_dir)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / STATE_FILE).read_text())
        start, losses, tokens = state["step"], [tuple(x) for x in state["losses"]], state["tokens"]

    rank, world = accelerator.process_index, accelerator.num_processes
    model.train()
    began, last_loss = time.perf_counter(), float("nan")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with LoggedProgress(*columns, console=Console(stderr=True), transient=False,
                        disable=not (progress and accelerator.is_main_process)) as bar:
        job = bar.add_task(description, total=config.steps, completed=start, loss="-")
        for step in range(start, config.steps):
            batch = {k: v.to(accelerator.device) for k, v in make_batch(step, rank, world).items()}
            loss_sum, count = loss_fn(model, batch, step)
            total = accelerator.reduce(count.detach().float().clone(), reduction="sum").clamp(min=1.0)
            loss = loss_sum * world / total
            accelerator.backward(loss)
            if config.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(total.item())
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                last_loss = accelerator.reduce(loss.detach() / world, reduction="sum").item()
                losses.append((step + 1, round(last_loss, 5)))
                bar.update(job, loss=f"{last_loss:.4f}")
            bar.update(job, advance=1)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                _save_checkpoint(accelerator, run_dir, {"step": step + 1, "losses": losses, "tokens": tokens,
                                                        "config": asdict(config)})
    model.eval()
    return TrainResult(steps=config.steps, resumed_from=start, seconds=time.perf_counter() - began,
                       final_loss=last_loss, tokens=tokens, losses=losses)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model
