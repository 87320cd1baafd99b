"""`stillwatch distill`: train a small student from a harvest store (and optionally a live teacher)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer


def distill(
    data: Path = typer.Option(..., "--data", help="Harvest store written by `stillwatch harvest`."),
    out: Path = typer.Option(..., "--out", help="Student model directory to write (resumes an interrupted run)."),
    preset: str = typer.Option("student", "--preset", help="Size of a new student (ignored with --init); student-b uses tokenizer B (another family)."),
    loss: str = typer.Option("sft", "--loss", help="sft (teacher's text), kd (top-k or white-box logits; across tokenizers, the top k is aligned), on-policy (GKD)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this HF model directory instead of a preset."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="In-process teacher: white-box kd, or scoring for on-policy."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="OpenAI-compatible teacher that scores on-policy samples."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Key for --endpoint."),
    served_model: str = typer.Option("stillwatch", "--served-model", help="Model name at --endpoint."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Optimiser steps."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Global batch size (sequences per step)."),
    lr: float = typer.Option(3e-3, "--lr", help="Peak learning rate (cosine schedule with warm-up)."),
    divergence: Optional[str] = typer.Option(None, "--divergence", help="forward, reverse or jsd (default: forward for kd, reverse for on-policy)."),
    beta: float = typer.Option(0.5, "--beta", help="Generalized JSD interpolation (with --divergence jsd)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Distillation temperature (loss scaled by T^2)."),
    lmbda: float = typer.Option(0.5, "--lmbda", help="GKD: fraction of steps trained on the student's own samples."),
    ce_weight: float = typer.Option(0.0, "--ce-weight", help="Add this weight of cross-entropy on the teacher's sampled token."),
    teacher_top_k: int = typer.Option(0, "--teacher-top-k", help="Use only the in-process teacher's top K (an API's view); 0 = full logits (32 aligned candidates when the teacher's tokenizer is another)."),
    endpoint_top_k: int = typer.Option(5, "--endpoint-top-k", help="Top-k logprobs asked of --endpoint when scoring."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", help="Length limit of on-policy student samples."),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", min=1, help="Steps between checkpoints."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, data order and sampling."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Tokenizer directory for a new student (default: the teacher's, else the built-in one)."),
) -> None:
    """Distil a student: a new one from a preset or an existing model, from harvested teacher outputs."""
    from rich.console import Console

    from stillwatch.distill.run import DistillConfig
    from stillwatch.distill.run import distill as run_distill
    from stillwatch.redact import command_line

    config = DistillConfig(loss=loss, divergence=divergence, beta=beta, temperature=temperature,  # type: ignore[arg-type]
                           lmbda=lmbda, ce_weight=ce_weight, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                           teacher_top_k=teacher_top_k, endpoint_top_k=endpoint_top_k, max_new_tokens=max_new_tokens,
                           checkpoint_every=checkpoint_every)
    card = run_distill(data, out, config, preset=preset, init=init, teacher=teacher, endpoint=endpoint,
                       api_key=api_key, served_model=served_model, tokenizer_dir=tokenizer,
                       command=command_line(program="stillwatch", secrets=[api_key]))
    if os.environ.get("RANK", "0") != "0":  # under torchrun / accelerate launch, rank 0 reports
        return
    console = Console()
    train = card["train"]
    console.print(f"student {out}: {card['parameters']:,} parameters, loss {card['loss']}, {train['steps']} steps in "
                  f"{train['seconds']:.0f} s, final loss {train['final_loss']:.4f}, teacher tokens "
                  f"{card['teacher_tokens']['total']:,}")
    reference = f" --reference {teacher}" if teacher else " --reference TEACHER_DIR"
    console.print(f"next: stillwatch eval --model {out}{reference}")


def register(app: typer.Typer) -> None:
    """Add `distill`."""
    app.command("distill")(distill)
