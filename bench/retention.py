"""Benchmark: how much of the default teacher a 1/10-size student keeps, per loss and per teacher token; retention.json.

    python bench/retention.py            # full size (about 15 minutes on 2 CPU cores)
    python bench/retention.py --smoke    # tiny sizes, to keep the script working in CI

Black-box only: the students never see the teacher's weights. They learn from what an API returns,
harvested once (greedy completions with their top-k logprobs), and for `on-policy` from the teacher's top-k
logprobs of the student's own samples (what `/v1/completions` with echo returns; here the in-process
teacher is asked for exactly that view, `--teacher-top-k`). Rows:
  * baselines, the same student on ground truth with unlimited fresh examples: answers only, reference traces;
  * `sft` (sequence-level KD) and `kd` (sparse top-k KD with the tail bucket) at harvest sizes 4x apart, so
    retention can be read against teacher tokens consumed;
  * `kd+on-policy`: the kd student, then a short GKD phase (lambda 0.5, reverse KL) scored by the teacher.
Retention = student accuracy / teacher accuracy per reasoning task (greedy, held-out prompts); speed-up =
student / teacher generation throughput (batched greedy decoding, tokens/s) on this machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from stillwatch.distill.run import DistillConfig, distill  # noqa: E402
from stillwatch.evaluate import evaluate  # noqa: E402
from stillwatch.harvest import HarvestStore, harvest, task_source, tokenizer_info  # noqa: E402
from stillwatch.data import causal_lm_loss  # noqa: E402
from stillwatch.models import build_model, count_parameters, load_model, save_model  # noqa: E402
from stillwatch.runinfo import run_info  # noqa: E402
from stillwatch.tasks import REASONING_TASKS, TASK_NAMES, get_tasks  # noqa: E402
from stillwatch.teach import task_batches, teach  # noqa: E402
from stillwatch.teachers.completion import SamplingParams  # noqa: E402
from stillwatch.teachers.local import LocalTeacher  # noqa: E402
from stillwatch.tokenizer import load_tokenizer  # noqa: E402
from stillwatch.train import TrainConfig, train  # noqa: E402

SIZES = {
    # Prompts per task at each harvest size (x4 apart, to read "a quarter of the tokens" off the table), one
    # optimiser budget for every student, and a short on-policy phase that starts from the kd student.
    "full": dict(prompts=[96, 384], steps=2000, batch_size=16, lr=1e-2, eval_n=200, top_k=8,
                 onpolicy_prompts=[96], onpolicy_steps=100, max_new_tokens=64),
    "smoke": dict(prompts=[8, 16], steps=6, batch_size=8, lr=1e-2, eval_n=8, top_k=4, onpolicy_prompts=[8],
                  onpolicy_steps=3, max_new_tokens=32),
}
TARGET_RETENTION, TARGET_SPEEDUP, TARGET_EFFICIENT_RETENTION = 0.97, 3.0, 0.95


def ensure_teacher(path: Path, smoke: bool, seed: int) -> Path:
    """runs/teacher-default (trained with `stillwatch teach` defaults if missing), or a tiny one for --smoke."""
    if not (path / "config.json").is_file():
        print(f"training teacher into {path} ...", flush=True)
        teach(path, preset="tiny" if smoke else "default", seed=seed, steps=30 if smoke else None,
              eval_n=10 if smoke else 200)
    return path


def harvest_rows(teacher: LocalTeacher, path: Path, prompts_per_task: int, top_k: int, seed: int) -> dict[str, list]:
    """Greedy completions with top-k logprobs for every task, harvested once; rows grouped by task, in prompt order."""
    with HarvestStore(path, create=True) as store:
        store.record_teacher(teacher.name, {"tokenizer": tokenizer_info(teacher.tokenizer)})
        harvest(teacher, task_source(list(TASK_NAMES), prompts_per_task, seed), store,
                SamplingParams(max_tokens=96, temperature=0.0, seed=seed, top_logprobs=top_k),
                concurrency=256, progress=False)
        by_task: dict[str, list] = defaultdict(list)
        for row in store.iter_rows():
            by_task[row.task].append(row)
    return by_task


def ground_truth_student(out: Path, teacher_dir: Path, preset: str, size: dict, answers_only: bool, seed: int) -> dict:
    """The baseline: the same student, steps, batch and learning rate on fresh ground-truth examples every step."""
    tokenizer = load_tokenizer(teacher_dir)
    model = build_model(preset, tokenizer, seed=seed)
    config = TrainConfig(steps=size["steps"], lr=size["lr"], warmup=50, seed=seed, checkpoint_every=10**9, log_every=100)
    batches = task_batches(tokenizer, get_tasks(list(TASK_NAMES)), size["batch_size"], seed, answers_only)
    result = train(model, batches, causal_lm_loss, config, out / "_run", progress=False)
    save_model(model, tokenizer, out, {"kind": "ground-truth-baseline", "answers_only": answers_only})
    return {"train": result.to_dict(), "teacher_tokens": {"total": 0}}


def subset(by_task: dict[str, list], n: int) -> list:
    """The first `n` harvested prompts of every task: larger harvests contain the smaller ones."""
    return [row for rows in by_task.values() for row in rows[:n]]


def measure(model_dir: Path, eval_n: int) -> dict:
    """Accuracy per task and generation throughput of a model directory."""
    model, tokenizer = load_model(model_dir)
    report = evaluate(LocalTeacher(model, tokenizer), get_tasks(list(TASK_NAMES)), n=eval_n, latency_samples=4)
    return {"accuracy": {k: v["accuracy"] for k, v in report["tasks"].items()}, "tokens_per_s": report["tokens_per_s"],
            "latency_ms": report["latency_ms"], "parameters": count_parameters(model)}


def summarise(row: dict, teacher: dict) -> dict:
    row["retention"] = {t: (row["accuracy"][t] / teacher["accuracy"][t] if teacher["accuracy"][t] else None)
                        for t in TASK_NAMES}
    kept = [row["retention"][t] for t in REASONING_TASKS if row["retention"][t] is not None]
    row["min_reasoning_retention"] = min(kept) if kept else None
    row["speedup"] = row["tokens_per_s"] / teacher["tokens_per_s"] if teacher["tokens_per_s"] else None
    row["parameter_ratio"] = row["parameters"] / teacher["parameters"]
    return row


def tokens_to_reach(rows: list[dict], method: str, level: float) -> int | None:
    """Fewest teacher tokens at which `method` kept >= `level` on every reasoning task."""
    hits = [r["teacher_tokens"] for r in rows if r["method"] == method and (r["min_reasoning_retention"] or 0) >= level]
    return min(hits) if hits else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a minute not fifteen")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these sizes on a shared box)")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher directory (default runs/teacher-default)")
    parser.add_argument("--steps", type=int, default=None, help="override the student step budget (the 15-minute "
                        "default is far below what a 1/10 student needs to learn digit lookups)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = dict(SIZES["smoke" if args.smoke else "full"])
    if args.steps:
        size["steps"] = args.steps
    student_preset = "student-tiny" if args.smoke else "student"

    work = ROOT / "runs" / ("bench-retention-smoke" if args.smoke else "bench-retention")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    teacher_dir = ensure_teacher(args.teacher or ROOT / "runs" / ("teacher-smoke" if args.smoke else "teacher-default"),
                                 args.smoke, args.seed)
    teacher = {"method": "teacher", **measure(teacher_dir, size["eval_n"])}
    print(f"teacher: {teacher['accuracy']} {teacher['tokens_per_s']:.0f} tok/s", flush=True)
    by_task = harvest_rows(LocalTeacher.from_dir(teacher_dir), work / "harvest.db", max(size["prompts"]), size["top_k"],
                           args.seed)
    rows: list[dict] = []

    def record(method: str, out: Path, card: dict, prompts: int | None) -> None:
        row = {"method": method, "prompts_per_task": prompts,
               "teacher_tokens": card.get("teacher_tokens", {}).get("total", 0),
               "train_seconds": round(card["train"]["seconds"], 1), **measure(out, size["eval_n"])}
        rows.append(summarise(row, teacher))
        print(f"{method:<22}{prompts or '-':>6}  tokens {row['teacher_tokens']:>8,}  "
              + " ".join(f"{t} {row['accuracy'][t]:.1%}" for t in TASK_NAMES)
              + f"  speed-up {row['speedup']:.2f}x", flush=True)

    # Ground-truth baselines: the same student and budget on unlimited fresh task examples.
    for method, answers_only in (("gt-answers-only", True), ("gt-traces", False)):
        out = work / method
        card = ground_truth_student(out, teacher_dir, student_preset, size, answers_only, args.seed)
        record(method, out, card, None)

    base = dict(steps=size["steps"], batch_size=size["batch_size"], lr=size["lr"], warmup=50, seed=args.seed,
                checkpoint_every=10**9, log_every=100, max_new_tokens=size["max_new_tokens"])
    for method, n in [("sft", n) for n in size["prompts"]] + [("kd", n) for n in size["prompts"]]:
        out = work / f"{method}-{n}"
        card = distill(subset(by_task, n), out, DistillConfig(loss=method, **base), preset=student_preset,
                       progress=False)
        record(method, out, card, n)
    # GKD as a second phase (the student first learns from the harvest, then from its own samples): lambda 0.5,
    # reverse KL, the teacher's top-k view of the student's tokens. Teacher tokens: the kd phase's harvest plus
    # the tokens scored here (off-policy steps reuse rows already counted).
    for n in size["onpolicy_prompts"]:
        out = work / f"kd+on-policy-{n}"
        first = json.loads((work / f"kd-{n}" / "stillwatch_card.json").read_text())
        cfg = DistillConfig(loss="on-policy", lmbda=0.5, teacher_top_k=size["top_k"],
                            **{**base, "steps": size["onpolicy_steps"], "lr": size["lr"] / 5, "warmup": 5})
        card = distill(subset(by_task, n), out, cfg, init=work / f"kd-{n}", teacher=teacher_dir, progress=False)
        card["teacher_tokens"] = {"total": first["teacher_tokens"]["total"] + card["teacher_tokens"]["scored"]}
        card["train"]["seconds"] += first["train"]["seconds"]
        record("kd+on-policy", out, card, n)

    students = [r for r in rows if r["method"] not in ("gt-answers-only", "gt-traces")]
    best = max(students, key=lambda r: r["min_reasoning_retention"] or 0)
    sft_tokens = tokens_to_reach(rows, "sft", TARGET_EFFICIENT_RETENTION)
    efficient = {m: tokens_to_reach(rows, m, TARGET_EFFICIENT_RETENTION) for m in ("kd", "kd+on-policy")}
    targets = {
        "best_method": f"{best['method']}@{best['prompts_per_task']}",
        "retention_ge_97_every_reasoning_task": (best["min_reasoning_retention"] or 0) >= TARGET_RETENTION,
        "speedup_ge_3": (best["speedup"] or 0) >= TARGET_SPEEDUP,
        "parameter_ratio_le_0_1": best["parameter_ratio"] <= 0.1,
        "tokens_to_95_retention": {"sft": sft_tokens, **efficient},
        "kd_or_on_policy_95_with_quarter_of_sft_tokens": bool(sft_tokens) and any(
            v is not None and v <= sft_tokens / 4 for v in efficient.values()),
    }
    result = {"benchmark": "retention", **run_info(args.seed), "smoke": args.smoke,
              "sizes": {**size, "student_preset": student_preset, "threads": args.threads,
                        "teacher": str(teacher_dir.relative_to(ROOT) if teacher_dir.is_relative_to(ROOT) else teacher_dir)},
              "teacher": teacher, "rows": rows, "targets": targets}
    out = ROOT / "bench" / "results" / ("retention-smoke.json" if args.smoke else "retention.json")
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'method':<18}{'prompts':>8}{'teacher tok':>12}" + "".join(f"{t:>8}" for t in TASK_NAMES)
          + f"{'min ret':>9}{'speed-up':>9}{'params':>8}")
    print(f"{'teacher':<18}{'':>8}{'':>12}" + "".join(f"{teacher['accuracy'][t]:>8.1%}" for t in TASK_NAMES)
          + f"{'':>9}{'1.00x':>9}{'1.000':>8}")
    for r in rows:
        ret = r["min_reasoning_retention"]
        print(f"{r['method']:<18}{r['prompts_per_task'] or '-':>8}{r['teacher_tokens']:>12,}"
              + "".join(f"{r['accuracy'][t]:>8.1%}" for t in TASK_NAMES)
              + f"{'-' if ret is None else f'{ret:.1%}':>9}{r['speedup']:>8.2f}x{r['parameter_ratio']:>8.3f}")
    print(f"targets: {json.dumps(targets)}\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
