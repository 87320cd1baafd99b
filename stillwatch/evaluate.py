"""Accuracy, valid rate, throughput and latency of a model on the built-in tasks; retention against a reference."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from stillwatch.models import count_parameters
from stillwatch.progress import LoggedProgress
from stillwatch.tasks import Task, examples, extract_answer
from stillwatch.teachers.base import Teacher, run_on_own_loop
from stillwatch.teachers.completion import SamplingParams

EVAL_SEED = 1_000_003  # far from every training seed's stream
MAX_TOKENS = 96
# Open tasks are sampled as open-ended text usually is: temperature 1 with nucleus sampling, which cuts the
# long tail of near-zero-probability tokens that no deployment samples from.
OPEN_TEMPERATURE, OPEN_TOP_P = 1.0, 0.95
# Throughput is measured the way a server meets it: a full batch of prompts, every sequence decoding exactly
# this many tokens. Fixed lengths make it independent of what the model writes (a broken student that stops
# early, or rambles, would otherwise look faster or slower than it is).
THROUGHPUT_BATCH, THROUGHPUT_TOKENS = 256, 48


def evaluate(teacher: Teacher, tasks: Sequence[Task], n: int = 200, seed: int = EVAL_SEED,
             latency_samples: int = 8, throughput_batch: int = THROUGHPUT_BATCH, progress: bool = False) -> dict:
    """Score `n` held-out prompts per task: greedy for reasoning tasks, nucleus-sampled for open ones."""
    with LoggedProgress(TextColumn("eval {task.fields[task]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not progress, transient=True) as bar:
        job = bar.add_task("eval", total=n * len(tasks), task=tasks[0].name if tasks else "")
        return _evaluate(teacher, tasks, n, seed, latency_samples, throughput_batch,
                         lambda name: bar.update(job, task=name), lambda: bar.update(job, advance=n))


def _evaluate(teacher: Teacher, tasks: Sequence[Task], n: int, seed: int, latency_samples: int,
              throughput_batch: int, starting: Callable[[str], None], finished: Callable[[], None]) -> dict:
    report: dict = {"tasks": {}, "n": n, "seed": seed}
    generated, seconds = 0, 0.0
    for task in tasks:
        starting(task.name)
        exs = examples(task, n, seed)
        reasoning = task.kind == "reasoning"
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0 if reasoning else OPEN_TEMPERATURE,
                                top_p=1.0 if reasoning else OPEN_TOP_P, seed=seed)
        began = time.perf_counter()
        outputs = run_on_own_loop(teacher, teacher.complete([e.prompt for e in exs], params))
        seconds += time.perf_counter() - began
        completions = [o[0] for o in outputs]
        generated += sum(c.completion_tokens for c in completions)
        correct = [task.score(e.prompt, c.text) for e, c in zip(exs, completions)]
        report["tasks"][task.name] = {
            "kind": task.kind,
            "n": n,
            "accuracy": sum(correct) / n,
            "answers": [extract_answer(c.text) if task.kind == "reasoning" else None for c in completions],
        }
        finished()
    model, tokenizer = getattr(teacher, "model", None), getattr(teacher, "tokenizer", None)
    if model is not None and tokenizer is not None and throughput_batch > 0:
        prompts = throughput_prompts(tasks, throughput_batch, seed + 2)
        report["tokens_per_s"] = generation_throughput(model, tokenizer, prompts)
        report["throughput"] = {"batch": throughput_batch, "new_tokens": THROUGHPUT_TOKENS, "method": "fixed-length"}
    else:  # a remote teacher: the rate of the evaluation's own requests
        report["tokens_per_s"] = generated / seconds if seconds else 0.0
        report["throughput"] = {"method": "evaluation requests"}
    report["latency_ms"] = _latency_ms(teacher, tasks, latency_samples, seed)
    report["parameters"] = count_parameters(model) if model is not None else None
    return report


def throughput_prompts(tasks: Sequence[Task], batch: int, seed: int) -> list[str]:
    """`batch` held-out prompts, the tasks taken in turn (so any batch size mixes them)."""
    per_task = [[e.prompt for e in examples(t, -(-batch // len(tasks)), seed)] for t in tasks]
    return [group[i] for i in range(len(per_task[0])) for group in per_task][:batch]


@torch.inference_mode()
def generation_throughput(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                          new_tokens: int = THROUGHPUT_TOKENS, repeats: int = 2) -> float:
    """Greedy tokens/s for one batch of `prompts`, each decoding exactly `new_tokens` (best of `repeats`)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only models pad on the left
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    best = float("inf")
    for _ in range(repeats):  # the first also warms allocator caches
        began = time.perf_counter()
        model.generate(**enc.to(model.device), generation_config=config)
        best = min(best, time.perf_counter() - began)
    return len(prompts) * new_tokens / best


def _latency_ms(teacher: Teacher, tasks: Sequence[Task], samples: int, seed: int) -> float:
    """Mean wall time of one greedy completion requested alone."""
    if samples <= 0:
        return 0.0
    prompts = [e.prompt for t in tasks for e in examples(t, max(1, samples // len(tasks)), seed + 1)]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    began = time.perf_counter()
    for p in prompts:
        run_on_own_loop(teacher, teacher.complete([p], params))
    return 1000 * (time.perf_counter() - began) / len(prompts)


def compare(student: dict, reference: dict) -> dict:
    """Retention (student accuracy / reference accuracy), answer agreement, parameter ratio and speed-up."""
    out: dict = {"tasks": {}}
    for name, s in student["tasks"].items():
        r = reference["tasks"].get(name)
        if r is None:
            continue
        row = {"retention": s["accuracy"] / r["accuracy"] if r["accuracy"] else None}
        if s["kind"] == "reasoning":
            same = [a is not None and a == b for a, b in zip(s["answers"], r["answers"])]
            row["agreement"] = sum(same) / len(same) if same else None
        out["tasks"][name] = row
    if student.get("parameters") and reference.get("parameters"):
        out["parameter_ratio"] = student["parameters"] / reference["parameters"]
    if reference.get("tokens_per_s"):
        out["throughput_speedup"] = student["tokens_per_s"] / reference["tokens_per_s"]
    return out
