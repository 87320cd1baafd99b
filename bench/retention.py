"""Benchmark: how much of the default teacher a 1/10-size student keeps, per loss and per teacher token; retention.json.

    python bench/retention.py --jobs 2     # full size (about 45 minutes on 2 CPU cores)
    python bench/retention.py --smoke      # tiny sizes, to keep the script working in CI

Black-box only: the students never see the teacher's weights. They learn from what an API returns, harvested
once (reasoning tasks greedy, the open task sampled at temperature 1, each token with its top-k logprobs), and
for `on-policy` from the teacher's top-k logprobs of the student's own samples (what `/v1/completions` with
echo returns; here the in-process teacher is asked for exactly that view, `--teacher-top-k`). Rows:
  * baselines, the same student on ground truth with unlimited fresh examples: answers only, reference traces;
  * `sft` (sequence-level KD) and `kd` (sparse top-k KD with the tail bucket) at harvest sizes 4x apart, so
    retention can be read against teacher tokens consumed;
  * `kd+on-policy`: the kd student, then a GKD phase (lambda 0.5, reverse KL) scored by the teacher.
Retention = student accuracy / teacher accuracy per reasoning task (greedy, held-out prompts). Speed-up =
student / teacher generation throughput: a batch of 256 prompts decoding exactly 48 tokens each (the figure a
server sees), plus the single-sequence figure. Students train in parallel (`--jobs`); every throughput is
measured afterwards, one model at a time, so no two measurements share the CPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from stillwatch.data import causal_lm_loss  # noqa: E402
from stillwatch.distill.run import DistillConfig, distill  # noqa: E402
from stillwatch.evaluate import evaluate, generation_throughput, throughput_prompts  # noqa: E402
from stillwatch.harvest import HarvestStore, harvest, task_source, tokenizer_info  # noqa: E402
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
    # optimiser budget for every student (the teacher's own learning rate: 1e-2 stalls the digit lookups), and
    # an on-policy phase that starts from the kd student.
    "full": dict(prompts=[250, 1000, 4000], steps=12000, batch_size=16, lr=3e-3, eval_n=200, top_k=20,
                 onpolicy_prompts=[1000], onpolicy_steps=600, max_new_tokens=64),
    "smoke": dict(prompts=[8, 16], steps=6, batch_size=8, lr=3e-3, eval_n=8, top_k=4, onpolicy_prompts=[8],
                  onpolicy_steps=3, max_new_tokens=32),
}
TARGET_RETENTION, TARGET_SPEEDUP, TARGET_EFFICIENT_RETENTION = 0.97, 3.0, 0.95
THROUGHPUT_BATCHES = (1, 256)


def ensure_teacher(path: Path, smoke: bool, seed: int) -> Path:
    """runs/teacher-default (trained with `stillwatch teach` defaults if missing), or a tiny one for --smoke."""
    if not (path / "config.json").is_file():
        print(f"training teacher into {path} ...", flush=True)
        teach(path, preset="tiny" if smoke else "default", seed=seed, steps=30 if smoke else None,
              eval_n=10 if smoke else 200)
    return path


def harvest_rows(teacher: LocalTeacher, path: Path, prompts_per_task: int, top_k: int, seed: int) -> None:
    """Every task's completions with top-k logprobs, harvested once: reasoning greedy, the open task sampled."""
    reasoning = [t.name for t in get_tasks(list(TASK_NAMES)) if t.kind == "reasoning"]
    open_tasks = [t for t in TASK_NAMES if t not in reasoning]
    with HarvestStore(path, create=True) as store:
        store.record_teacher(teacher.name, {"tokenizer": tokenizer_info(teacher.tokenizer)})
        for names, temperature in ((reasoning, 0.0), (open_tasks, 1.0)):
            harvest(teacher, task_source(names, prompts_per_task, seed), store,
                    SamplingParams(max_tokens=96, temperature=temperature, seed=seed, top_logprobs=top_k),
                    concurrency=256, progress=False)


def subset(store_path: Path, n: int) -> list:
    """The first `n` harvested prompts of every task: larger harvests contain the smaller ones."""
    by_task: dict[str, list] = defaultdict(list)
    with HarvestStore(store_path) as store:
        for row in store.iter_rows():
            if len(by_task[row.task]) < n:
                by_task[row.task].append(row)
    return [row for rows in by_task.values() for row in rows]


def train_student(job: dict) -> dict:
    """One student (a worker process): train it as `job` says, save it, and score its accuracy."""
    torch.set_num_threads(job["threads"])
    size, out, teacher_dir, seed = job["size"], Path(job["out"]), Path(job["teacher"]), job["seed"]
    base = dict(steps=size["steps"], batch_size=size["batch_size"], lr=size["lr"], warmup=100, seed=seed,
                checkpoint_every=10**9, log_every=100, max_new_tokens=size["max_new_tokens"])
    if job["method"].startswith("gt-"):  # the same student, steps, batch and learning rate on fresh ground truth
        tokenizer = load_tokenizer(teacher_dir)
        model = build_model(job["preset"], tokenizer, seed=seed)
        config = TrainConfig(**{k: base[k] for k in ("steps", "lr", "warmup", "seed", "checkpoint_every", "log_every")})
        batches = task_batches(tokenizer, get_tasks(list(TASK_NAMES)), size["batch_size"], seed,
                               answers_only=job["method"] == "gt-answers-only")
        result = train(model, batches, causal_lm_loss, config, out / "_run", progress=False)
        save_model(model, tokenizer, out, {"kind": "ground-truth-baseline"})
        card = {"train": result.to_dict(), "teacher_tokens": {"total": 0}}
    elif job["method"] == "kd+on-policy":
        # GKD as a second phase (the student first learns from the harvest, then from its own samples): lambda
        # 0.5, reverse KL, the teacher's top-k view of the student's tokens. Teacher tokens: the kd phase's
        # harvest plus the tokens scored here (off-policy steps reuse rows already counted).
        first_dir = Path(job["init"])
        first = json.loads((first_dir / "stillwatch_card.json").read_text())
        cfg = DistillConfig(loss="on-policy", lmbda=0.5, teacher_top_k=size["top_k"],
                            **{**base, "steps": size["onpolicy_steps"], "lr": size["lr"] / 3, "warmup": 20})
        card = distill(subset(Path(job["store"]), job["prompts"]), out, cfg, init=first_dir, teacher=teacher_dir,
                       progress=False)
        card["teacher_tokens"] = {"total": first["teacher_tokens"]["total"] + card["teacher_tokens"]["scored"]}
        card["train"]["seconds"] += first["train"]["seconds"]
    else:
        card = distill(subset(Path(job["store"]), job["prompts"]), out, DistillConfig(loss=job["method"], **base),
                       preset=job["preset"], progress=False)
    model, tokenizer = load_model(out)
    report = evaluate(LocalTeacher(model, tokenizer), get_tasks(list(TASK_NAMES)), n=size["eval_n"],
                      latency_samples=0, throughput_batch=0)
    return {"method": job["method"], "prompts_per_task": job["prompts"], "dir": str(out),
            "teacher_tokens": card.get("teacher_tokens", {}).get("total", 0),
            "train_seconds": round(card["train"]["seconds"], 1),
            "accuracy": {k: v["accuracy"] for k, v in report["tasks"].items()}, "parameters": count_parameters(model)}


def paired_throughput(teacher_dir: Path, student_dir: Path, rounds: int = 5) -> tuple[dict, dict]:
    """Fixed-length greedy tokens/s of teacher and student per batch size: medians of `rounds` runs taken in
    alternation, so that the machine's drifting speed (other jobs, clocks) weighs on both sides alike."""
    models = [load_model(teacher_dir), load_model(student_dir)]
    rates: list[dict[str, list[float]]] = [defaultdict(list), defaultdict(list)]
    for batch in THROUGHPUT_BATCHES:
        prompts = throughput_prompts(get_tasks(list(TASK_NAMES)), batch, 77)
        for model, tokenizer in models:  # warm-up
            generation_throughput(model, tokenizer, prompts, repeats=1)
        for _ in range(rounds):
            for side, (model, tokenizer) in enumerate(models):
                rates[side][str(batch)].append(generation_throughput(model, tokenizer, prompts, repeats=1))
    teacher, student = ({b: statistics.median(v) for b, v in r.items()} for r in rates)
    return teacher, student


def summarise(row: dict, teacher: dict) -> dict:
    row["retention"] = {t: (row["accuracy"][t] / teacher["accuracy"][t] if teacher["accuracy"][t] else None)
                        for t in TASK_NAMES}
    kept = [row["retention"][t] for t in REASONING_TASKS if row["retention"][t] is not None]
    row["min_reasoning_retention"] = min(kept) if kept else None
    row["speedup_by_batch"] = {b: row["tokens_per_s"][b] / row["teacher_tokens_per_s"][b] for b in row["tokens_per_s"]}
    row["speedup"] = row["speedup_by_batch"][str(max(THROUGHPUT_BATCHES))]
    row["parameter_ratio"] = row["parameters"] / teacher["parameters"]
    return row


def tokens_to_reach(rows: list[dict], method: str, level: float) -> int | None:
    """Fewest teacher tokens at which `method` kept >= `level` on every reasoning task."""
    hits = [r["teacher_tokens"] for r in rows if r["method"] == method and (r["min_reasoning_retention"] or 0) >= level]
    return min(hits) if hits else None


def check_targets(rows: list[dict]) -> dict:
    """The issue's goals, read off the rows."""
    students = [r for r in rows if not r["method"].startswith("gt-")]
    best = max(students, key=lambda r: (r["min_reasoning_retention"] or 0, -r["teacher_tokens"]))
    sft_tokens = tokens_to_reach(rows, "sft", TARGET_EFFICIENT_RETENTION)
    efficient = {m: tokens_to_reach(rows, m, TARGET_EFFICIENT_RETENTION) for m in ("kd", "kd+on-policy")}
    # When sft never reaches the level, it needs more than its largest harvest: a quarter of that is a bound.
    sft_bound = sft_tokens or max(r["teacher_tokens"] for r in rows if r["method"] == "sft")
    # every student has the same architecture: their spread is measurement noise, so judge the median
    speedup = statistics.median(r["speedup"] for r in students)
    return {
        "best_method": f"{best['method']}@{best['prompts_per_task']}",
        "retention_ge_97_every_reasoning_task": (best["min_reasoning_retention"] or 0) >= TARGET_RETENTION,
        "speedup_median": speedup,
        "speedup_ge_3": speedup >= TARGET_SPEEDUP,
        "parameter_ratio_le_0_1": best["parameter_ratio"] <= 0.1,
        "tokens_to_95_retention": {"sft": sft_tokens if sft_tokens else f"> {sft_bound}", **efficient},
        "kd_or_on_policy_95_with_quarter_of_sft_tokens": any(
            v is not None and v <= sft_bound / 4 for v in efficient.values()),
    }


def measure_throughput(teacher_dir: Path, teacher: dict, rows: list[dict]) -> None:
    """Each row's tokens/s next to the teacher's, measured in pairs; the teacher's figure is the median of all."""
    for row in rows:
        row["teacher_tokens_per_s"], row["tokens_per_s"] = paired_throughput(teacher_dir, ROOT / row["dir"])
        summarise(row, teacher)
        print(f"{row['method']:<18}{row['prompts_per_task'] or '-':>6}  speed-up " + "  ".join(
            f"batch {b}: {v:.2f}x" for b, v in row["speedup_by_batch"].items()), flush=True)
    teacher["tokens_per_s"] = {str(b): statistics.median(r["teacher_tokens_per_s"][str(b)] for r in rows)
                               for b in THROUGHPUT_BATCHES}


def remeasure_throughput(path: Path) -> None:
    """--throughput-only: the teacher and every student of `path` measured again, and the speed-ups redone."""
    result = json.loads(path.read_text())
    teacher = result["teacher"]
    measure_throughput(ROOT / result["sizes"]["teacher"], teacher, result["rows"])
    result["targets"] = check_targets(result["rows"])
    result["throughput_measured_by"] = run_info(result.get("seed"))
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"targets: {json.dumps(result['targets'])}\nwrote {path.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a minute not half an hour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="students trained at once, one torch thread each")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher directory (default runs/teacher-default)")
    parser.add_argument("--steps", type=int, default=None, help="override the student step budget")
    parser.add_argument("--throughput-only", action="store_true", help="measure throughput again for the models "
                        "of the last run (e.g. on a quiet machine) and update its results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.throughput_only:
        return remeasure_throughput(ROOT / "bench" / "results" / ("retention-smoke.json" if args.smoke else "retention.json"))
    size = dict(SIZES["smoke" if args.smoke else "full"])
    if args.steps:
        size["steps"] = args.steps
    preset = "student-tiny" if args.smoke else "student"

    work = ROOT / "runs" / ("bench-retention-smoke" if args.smoke else "bench-retention")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    teacher_dir = ensure_teacher(args.teacher or ROOT / "runs" / ("teacher-smoke" if args.smoke else "teacher-default"),
                                 args.smoke, args.seed)
    teacher_model, teacher_tok = load_model(teacher_dir)
    report = evaluate(LocalTeacher(teacher_model, teacher_tok), get_tasks(list(TASK_NAMES)), n=size["eval_n"],
                      latency_samples=0, throughput_batch=0)
    teacher = {"method": "teacher", "accuracy": {k: v["accuracy"] for k, v in report["tasks"].items()},
               "parameters": count_parameters(teacher_model)}
    print(f"teacher: {teacher['accuracy']}", flush=True)
    store = work / "harvest.db"
    harvest_rows(LocalTeacher(teacher_model, teacher_tok), store, max(size["prompts"]), size["top_k"], args.seed)

    common = {"size": size, "teacher": str(teacher_dir), "seed": args.seed, "preset": preset, "store": str(store),
              "threads": 1}
    jobs = [{"method": m, "prompts": None} for m in ("gt-answers-only", "gt-traces")]
    jobs += [{"method": m, "prompts": n} for m in ("sft", "kd") for n in size["prompts"]]
    jobs = [{**common, **j, "out": str(work / f"{j['method']}-{j['prompts'] or 'gt'}")} for j in jobs]
    second = [{**common, "method": "kd+on-policy", "prompts": n, "init": str(work / f"kd-{n}"),
               "out": str(work / f"kd+on-policy-{n}")} for n in size["onpolicy_prompts"]]
    rows: list[dict] = []
    # spawn, not fork: each worker starts its own torch with one thread
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        first = {j["out"]: pool.submit(train_student, j) for j in jobs}
        later = []
        for j in second:  # starts as soon as its kd student is done
            first[j["init"]].result()
            later.append(pool.submit(train_student, j))
        for future in [*first.values(), *later]:
            row = future.result()
            rows.append(row)
            print(f"{row['method']:<18}{row['prompts_per_task'] or '-':>6}  tokens {row['teacher_tokens']:>9,}  "
                  + " ".join(f"{t} {row['accuracy'][t]:.1%}" for t in TASK_NAMES), flush=True)

    # Throughput last, after every worker has stopped.
    for row in rows:
        row["dir"] = str(Path(row["dir"]).relative_to(ROOT))
    measure_throughput(teacher_dir, teacher, rows)
    targets = check_targets(rows)
    result = {"benchmark": "retention", **run_info(args.seed), "smoke": args.smoke,
              "sizes": {**size, "student_preset": preset, "jobs": args.jobs, "throughput_batches": THROUGHPUT_BATCHES,
                        "teacher": str(teacher_dir.relative_to(ROOT) if teacher_dir.is_relative_to(ROOT) else teacher_dir)},
              "teacher": teacher, "rows": rows, "targets": targets}
    out = ROOT / "bench" / "results" / ("retention-smoke.json" if args.smoke else "retention.json")
    out.write_text(json.dumps(result, indent=2) + "\n")

    big, one = str(max(THROUGHPUT_BATCHES)), str(min(THROUGHPUT_BATCHES))
    print(f"\n{'method':<18}{'prompts':>8}{'teacher tok':>12}" + "".join(f"{t:>8}" for t in TASK_NAMES)
          + f"{'min ret':>9}{'x@' + big:>8}{'x@' + one:>7}{'params':>8}")
    print(f"{'teacher':<18}{'':>8}{'':>12}" + "".join(f"{teacher['accuracy'][t]:>8.1%}" for t in TASK_NAMES)
          + f"{'':>9}{'1.00x':>8}{'1.00x':>7}{'1.000':>8}")
    for r in rows:
        ret = r["min_reasoning_retention"]
        print(f"{r['method']:<18}{r['prompts_per_task'] or '-':>8}{r['teacher_tokens']:>12,}"
              + "".join(f"{r['accuracy'][t]:>8.1%}" for t in TASK_NAMES)
              + f"{'-' if ret is None else f'{ret:.1%}':>9}{r['speedup_by_batch'][big]:>7.2f}x"
              + f"{r['speedup_by_batch'][one]:>6.2f}x{r['parameter_ratio']:>8.3f}")
    print(f"targets: {json.dumps(targets)}\nwrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
