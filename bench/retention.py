"""Benchmark: how much of the default teacher a 1/10-size student keeps, per loss and per teacher token; retention.json.

    python bench/retention.py --jobs 2                       # the quoted rows (kd and sft at 1,000 prompts per
                                                             # task) over seeds 0 1 2: about 35 minutes on 2 cores
    python bench/retention.py --rows all --seeds 0 --jobs 2  # every row, one seed (marked as such)
    python bench/retention.py --rows kd@250 --seeds 3        # a part; parts merge into one results file
    python bench/retention.py --smoke                        # tiny sizes, to keep the script working in CI

The teacher is the shipped default teacher (`--teacher DIR` for another). Black-box only: the students never
see the teacher's weights. They learn from what an API returns, harvested once (reasoning tasks greedy, the
open task sampled at temperature 1 with the harvest seed 0, each token with its top-k logprobs), and for
`on-policy` from the teacher's top-k logprobs of the student's own samples (what `/v1/completions` with echo
returns; here the in-process teacher is asked for exactly that view, `--teacher-top-k`). Rows:
  * baselines, the same student on ground truth with unlimited fresh examples: answers only, reference traces;
  * `sft` (sequence-level KD) and `kd` (sparse top-k KD with the tail bucket) at harvest sizes 4x apart, so
    retention can be read against teacher tokens consumed;
  * `kd+on-policy`: the kd student, then a GKD phase (lambda 0.5, reverse KL) scored by the teacher.
A seed is the student's: its initialisation and batch order (the harvest stays the same). Every row reports the
median and the worst seed; the goal is judged on the worst seed of the best method. Retention = student
accuracy / teacher accuracy per reasoning task (greedy, held-out prompts). Speed-up = student / teacher
generation throughput: a batch of 256 prompts decoding exactly 48 tokens each (the figure a server sees), plus
the single-sequence figure, measured after training, one model at a time, in alternation with the teacher.
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
from stillwatch.models import (BUILTIN, build_model, count_parameters, load_model, read_card,  # noqa: E402
                               resolve_model_dir, save_model)
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


def ensure_teacher(path: Path | None, smoke: bool, seed: int) -> Path:
    """The shipped teacher (or `path`); for --smoke a tiny one, trained when missing."""
    if not smoke:
        return resolve_model_dir(path or BUILTIN)
    path = path or ROOT / "runs" / "teacher-smoke"
    if not (path / "config.json").is_file():
        print(f"training teacher into {path} ...", flush=True)
        teach(path, preset="tiny", seed=seed, steps=30, eval_n=10)
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
    shutil.rmtree(out, ignore_errors=True)  # a part run again trains its students afresh
    # the same settings as `stillwatch distill --steps S --batch-size B` (the README's command), warm-up included
    base = dict(steps=size["steps"], batch_size=size["batch_size"], lr=size["lr"], warmup=DistillConfig.warmup,
                seed=seed, checkpoint_every=10**9, log_every=100, max_new_tokens=size["max_new_tokens"])
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
    return {"method": job["method"], "prompts_per_task": job["prompts"], "seed": seed, "dir": str(out),
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
    """Retention per task and its minimum over the reasoning tasks, and the parameter ratio."""
    row["retention"] = {t: (row["accuracy"][t] / teacher["accuracy"][t] if teacher["accuracy"][t] else None)
                        for t in TASK_NAMES}
    kept = [row["retention"][t] for t in REASONING_TASKS if row["retention"][t] is not None]
    row["min_reasoning_retention"] = min(kept) if kept else None
    row["parameter_ratio"] = row["parameters"] / teacher["parameters"]
    return row


def row_name(method: str, prompts: int | None) -> str:
    """`kd@1000`, or the method alone for the ground-truth baselines."""
    return method if prompts is None else f"{method}@{prompts}"


def by_row(runs: list[dict]) -> dict[str, dict]:
    """Each row's seeds folded together: median and worst (the seed with the lowest minimum retention)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[row_name(run["method"], run["prompts_per_task"])].append(run)
    out = {}
    for name, group in groups.items():
        key = [r["min_reasoning_retention"] or 0 for r in group]
        worst = group[key.index(min(key))]
        out[name] = {
            "method": group[0]["method"], "prompts_per_task": group[0]["prompts_per_task"],
            "teacher_tokens": group[0]["teacher_tokens"], "seeds": sorted(r["seed"] for r in group),
            "median_accuracy": {t: statistics.median(r["accuracy"][t] for r in group) for t in TASK_NAMES},
            "worst_accuracy": {t: min(r["accuracy"][t] for r in group) for t in TASK_NAMES},
            "median_min_reasoning_retention": statistics.median(key),
            "worst_min_reasoning_retention": min(key),
            "worst_seed": worst["seed"],
        }
    return out


def tokens_to_reach(rows: dict[str, dict], method: str, level: float) -> int | None:
    """Fewest teacher tokens at which `method` kept >= `level` on every reasoning task, on its worst seed."""
    hits = [r["teacher_tokens"] for r in rows.values()
            if r["method"] == method and r["worst_min_reasoning_retention"] >= level]
    return min(hits) if hits else None


def check_targets(rows: dict[str, dict], parameter_ratio: float, speedup: float | None) -> dict:
    """The goals, read off the rows: retention on the worst seed of the best method (among rows with >= 3 seeds
    when there are any)."""
    students = {k: r for k, r in rows.items() if not r["method"].startswith("gt-")}
    seeded = {k: r for k, r in students.items() if len(r["seeds"]) >= 3} or students
    best_name = max(seeded, key=lambda k: (seeded[k]["worst_min_reasoning_retention"], -seeded[k]["teacher_tokens"]))
    best = seeded[best_name]
    sft_tokens = tokens_to_reach(rows, "sft", TARGET_EFFICIENT_RETENTION)
    efficient = {m: tokens_to_reach(rows, m, TARGET_EFFICIENT_RETENTION) for m in ("kd", "kd+on-policy")}
    sft_sizes = [r["teacher_tokens"] for r in rows.values() if r["method"] == "sft"]
    # When sft never reaches the level, it needs more than its largest harvest: a quarter of that is a bound.
    sft_bound = sft_tokens or (max(sft_sizes) if sft_sizes else None)
    return {
        "best_method": best_name,
        "best_method_seeds": best["seeds"],
        "worst_seed_min_reasoning_retention": best["worst_min_reasoning_retention"],
        "retention_ge_97_every_reasoning_task_worst_seed": best["worst_min_reasoning_retention"] >= TARGET_RETENTION,
        "speedup_batch_256": speedup,
        "speedup_ge_3": speedup is not None and speedup >= TARGET_SPEEDUP,
        "parameter_ratio": parameter_ratio,
        "parameter_ratio_le_0_1": parameter_ratio <= 0.1,
        "tokens_to_95_retention": {"sft": sft_tokens if sft_tokens or sft_bound is None else f"> {sft_bound}",
                                   **efficient},
        "kd_or_on_policy_95_with_quarter_of_sft_tokens": sft_bound is not None and any(
            v is not None and v <= sft_bound / 4 for v in efficient.values()),
    }


def parse_rows(spec: list[str], size: dict) -> list[tuple[str, int | None]]:
    """(method, prompts per task) for each requested row; `all` is every row."""
    every = [("gt-answers-only", None), ("gt-traces", None)]
    every += [(m, n) for m in ("sft", "kd") for n in size["prompts"]]
    every += [("kd+on-policy", n) for n in size["onpolicy_prompts"]]
    if spec == ["all"]:
        return every
    known = {row_name(m, n): (m, n) for m, n in every}
    unknown = [r for r in spec if r not in known]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; choose from all, {', '.join(known)}")
    return [known[r] for r in spec]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a minute not half an hour")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    parser.add_argument("--rows", nargs="+", default=None, help="rows to train (default: the quoted kd and sft "
                        "rows at 1,000 prompts per task; `all` for every row)")
    parser.add_argument("--jobs", type=int, default=1, help="students trained at once, one torch thread each")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher directory (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=None, help="override the student step budget")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = dict(SIZES["smoke" if args.smoke else "full"])
    if args.steps:
        size["steps"] = args.steps
    quoted = [f"kd@{size['prompts'][1]}", f"sft@{size['prompts'][1]}"]
    wanted = parse_rows(args.rows or quoted, size)
    preset = "student-tiny" if args.smoke else "student"
    out = ROOT / "bench" / "results" / ("retention-smoke.json" if args.smoke else "retention.json")

    work = ROOT / "runs" / ("bench-retention-smoke" if args.smoke else "bench-retention")
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = ensure_teacher(args.teacher, args.smoke, 0)
    teacher_model, teacher_tok = load_model(teacher_dir)
    report = evaluate(LocalTeacher(teacher_model, teacher_tok), get_tasks(list(TASK_NAMES)), n=size["eval_n"],
                      latency_samples=0, throughput_batch=0)
    teacher = {"method": "teacher", "dir": _shown(teacher_dir),
               "accuracy": {k: v["accuracy"] for k, v in report["tasks"].items()},
               "parameters": count_parameters(teacher_model)}
    print(f"teacher: {teacher['accuracy']}", flush=True)
    store = work / "harvest.db"
    if not store.is_file():  # one harvest (seed 0) serves every part of the run
        harvest_rows(LocalTeacher(teacher_model, teacher_tok), store, max(size["prompts"]), size["top_k"], 0)

    common = {"size": size, "teacher": str(teacher_dir), "preset": preset, "store": str(store), "threads": 1}
    def job(method: str, prompts: int | None, seed: int) -> dict:
        name = f"{row_name(method, prompts)}-seed{seed}"
        extra = {"init": str(work / f"kd@{prompts}-seed{seed}")} if method == "kd+on-policy" else {}
        return {**common, **extra, "method": method, "prompts": prompts, "seed": seed, "out": str(work / name)}
    jobs = [job(m, n, s) for m, n in wanted for s in args.seeds]
    # an on-policy row needs its kd student of the same seed: train it first when this part lacks it
    needed = [job("kd", j["prompts"], j["seed"]) for j in jobs if j["method"] == "kd+on-policy"]
    jobs = [j for j in needed if j["out"] not in {k["out"] for k in jobs}] + jobs
    runs: list[dict] = []
    # spawn, not fork: each worker starts its own torch with one thread
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        first = {j["out"]: pool.submit(train_student, j) for j in jobs if j["method"] != "kd+on-policy"}
        later = []
        for j in (j for j in jobs if j["method"] == "kd+on-policy"):  # starts once its kd student is done
            first[j["init"]].result()
            later.append(pool.submit(train_student, j))
        for future in [*first.values(), *later]:
            run = future.result()
            run["dir"] = _shown(Path(run["dir"]))
            runs.append(summarise(run, teacher))
            print(f"{row_name(run['method'], run['prompts_per_task']):<20} seed {run['seed']}  tokens "
                  f"{run['teacher_tokens']:>9,}  " + " ".join(f"{t} {run['accuracy'][t]:.1%}" for t in TASK_NAMES),
                  flush=True)

    previous = json.loads(out.read_text()) if out.is_file() else {}
    same_setup = previous.get("sizes", {}).get("teacher") == teacher["dir"] and previous.get("teacher_commit") == (
        read_card(teacher_dir).get("git_commit"))
    done = {(r["method"], r["prompts_per_task"], r["seed"]) for r in runs}
    runs = [r for r in previous.get("runs", []) if same_setup
            and (r["method"], r["prompts_per_task"], r["seed"]) not in done] + runs
    # Every student has the same architecture, so one pair measurement gives the speed-up of all of them.
    teacher["tokens_per_s"], student_rate = paired_throughput(teacher_dir, ROOT / runs[-1]["dir"])
    speedup_by_batch = {b: student_rate[b] / teacher["tokens_per_s"][b] for b in student_rate}
    rows = by_row(runs)
    targets = check_targets(rows, runs[-1]["parameter_ratio"], speedup_by_batch[str(max(THROUGHPUT_BATCHES))])
    result = {"benchmark": "retention", **run_info(args.seeds[0]), "seeds": sorted({r["seed"] for r in runs}),
              "smoke": args.smoke, "teacher_commit": read_card(teacher_dir).get("git_commit"),
              "sizes": {**size, "student_preset": preset, "jobs": args.jobs, "throughput_batches": THROUGHPUT_BATCHES,
                        "teacher": teacher["dir"]},
              "teacher": teacher, "throughput": {"student": student_rate, "speedup_by_batch": speedup_by_batch,
                                                 "measured_on": runs[-1]["dir"]},
              "rows": rows, "runs": sorted(runs, key=lambda r: (r["method"], r["prompts_per_task"] or 0, r["seed"])),
              "targets": targets}
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'row':<20}{'seeds':>6}{'teacher tok':>12}" + "".join(f"{t:>15}" for t in TASK_NAMES)
          + f"{'min ret (median / worst)':>26}")
    print(f"{'teacher':<20}{'':>6}{'':>12}" + "".join(f"{teacher['accuracy'][t]:>15.1%}" for t in TASK_NAMES))
    for name, r in rows.items():
        print(f"{name:<20}{len(r['seeds']):>6}{r['teacher_tokens']:>12,}"
              + "".join(f"{r['median_accuracy'][t]:>8.1%}/{r['worst_accuracy'][t]:>6.1%}" for t in TASK_NAMES)
              + f"{r['median_min_reasoning_retention']:>17.1%} / {r['worst_min_reasoning_retention']:.1%}")
    print(f"speed-up: " + ", ".join(f"batch {b}: {v:.2f}x" for b, v in speedup_by_batch.items()))
    print(f"targets: {json.dumps(targets)}\nwrote {out.relative_to(ROOT)}")


def _shown(path: Path) -> str:
    """A path as results record it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    main()
