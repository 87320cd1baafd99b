"""Benchmark: train the default teacher from scratch over seeds x torch threads; write bench/results/teacher.json.

    python bench/teacher.py                    # 5 seeds x {1, 2} threads, plus the answers-only baseline
    python bench/teacher.py --seeds 0 1 --threads 2   # a part; parts merge into the same results file
    python bench/teacher.py --student-only     # only the answers-only baseline, beside the recorded runs
    python bench/teacher.py --smoke            # tiny sizes, to keep the script working in CI

Every run is a fresh `stillwatch teach` in its own process (its own torch thread count), so the benchmark
measures exactly what a user's command does. One-thread runs go two at a time (`--jobs`), one per core; two-
thread runs go alone. The recipe's goal is judged on the worst run, its time on the median. The answers-only
student (the `student` preset trained on answers without the trace, same steps) shows that the traces carry
the ability. Run it on an otherwise idle machine: the train time is part of the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stillwatch.models import get_preset, read_card  # noqa: E402
from stillwatch.runinfo import run_info  # noqa: E402
from stillwatch.tasks import REASONING_TASKS  # noqa: E402
from stillwatch.teach import RECIPES, teach  # noqa: E402

TARGET_SECONDS = 600
RUNS = ROOT / "runs" / "teacher-bench"


def train_one(seed: int, threads: int, preset: str, eval_n: int, steps: int | None) -> dict:
    """One `stillwatch teach` in a fresh process with `threads` torch threads; its card's numbers."""
    out = RUNS / f"{preset}-seed{seed}-threads{threads}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "stillwatch", "teach", "--out", str(out), "--preset", preset,
               "--seed", str(seed), "--eval-n", str(eval_n), *(["--steps", str(steps)] if steps else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    card = read_card(out)
    print(f"seed {seed} threads {threads}: {card['train']['seconds']:.0f} s training, "
          + " ".join(f"{k} {v:.1%}" for k, v in card["accuracy"].items()), flush=True)
    return {"seed": seed, "threads": threads, "accuracy": card["accuracy"], "below_target": card["below_target"],
            "train_seconds": round(card["train"]["seconds"], 1), "process_seconds": round(wall, 1),
            "steps": card["train"]["steps"], "eval_n": card["eval_n"], "dir": str(out.relative_to(ROOT)),
            "machine": card["machine"], "git_commit": card["git_commit"]}


def train_matrix(seeds: list[int], threads: list[int], preset: str, eval_n: int, steps: int | None,
                 jobs: int) -> list[dict]:
    """One-thread runs `jobs` at a time, then the multi-thread runs one at a time."""
    single = [(s, 1) for s in seeds if 1 in threads]
    multi = [(s, t) for t in threads if t != 1 for s in seeds]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        runs = list(pool.map(lambda st: train_one(st[0], st[1], preset, eval_n, steps), single))
    runs += [train_one(s, t, preset, eval_n, steps) for s, t in multi]
    for run in runs:
        run["concurrent_runs"] = max(1, jobs) if run["threads"] == 1 else 1
    return runs


def summarise(runs: list[dict], student: dict | None) -> dict:
    """Worst accuracy per task, median train time, and whether every run met every target."""
    tasks = list(runs[0]["accuracy"])
    seconds = [r["train_seconds"] for r in runs]
    summary = {
        "runs": len(runs),
        "worst_accuracy": {t: min(r["accuracy"][t] for r in runs) for t in tasks},
        "median_accuracy": {t: statistics.median(r["accuracy"][t] for r in runs) for t in tasks},
        "median_train_seconds": statistics.median(seconds),
        "max_train_seconds": max(seconds),
        "every_run_meets_targets": all(not r["below_target"] for r in runs),
        "runs_below_target": [f"seed {r['seed']} threads {r['threads']}: {r['below_target']}"
                              for r in runs if r["below_target"]],
        "median_train_le_600s": statistics.median(seconds) <= TARGET_SECONDS,
    }
    if student is not None:
        below = [t for t in REASONING_TASKS if student["accuracy"].get(t, 1.0) < 0.5]
        summary["answers_only_below_50_tasks"] = below
        summary["answers_only_below_50_on_two"] = len(below) >= 2
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny preset, few steps: seconds, not minutes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="one-thread runs at a time")
    parser.add_argument("--eval-n", type=int, default=500, help="held-out prompts per task")
    parser.add_argument("--no-student", action="store_true", help="skip the answers-only baseline")
    parser.add_argument("--student-only", action="store_true", help="keep the recorded teacher runs and train "
                        "only the answers-only baseline (after a change to the student preset)")
    args = parser.parse_args()
    preset, student_preset = ("tiny", "student-tiny") if args.smoke else ("default", "student")
    steps = 30 if args.smoke else None
    eval_n = 20 if args.smoke else args.eval_n
    path = ROOT / "bench" / "results" / ("teacher-smoke.json" if args.smoke else "teacher.json")
    previous = json.loads(path.read_text()) if path.is_file() else {}
    # Parts merge: a run of this part replaces the earlier run of the same seed and thread count.
    kept = [r for r in previous.get("runs", []) if previous.get("recipe") == _recipe(preset)
            and (r["seed"], r["threads"]) not in {(s, t) for s in args.seeds for t in args.threads}]

    if args.student_only:
        kept = [r for r in previous.get("runs", []) if previous.get("recipe") == _recipe(preset)]
        if not kept:
            raise SystemExit("--student-only needs recorded teacher runs of this recipe")
    new = [] if args.student_only else train_matrix(args.seeds, args.threads, preset, eval_n, steps, args.jobs)
    runs = kept + new
    runs.sort(key=lambda r: (r["threads"], r["seed"]))
    student = previous.get("answers_only_student") if previous.get("recipe") == _recipe(preset) else None
    if not args.no_student:
        out = RUNS / f"answers-only-{student_preset}"
        shutil.rmtree(out, ignore_errors=True)
        card = teach(out, preset=student_preset, seed=args.seeds[0], steps=steps or RECIPES[preset].schedule.steps,
                     task_names=list(runs[0]["accuracy"]), answers_only=True, eval_n=eval_n, progress=False,
                     tokenizer_from=ROOT / runs[0]["dir"])
        student = {"preset": student_preset, "seed": args.seeds[0], "parameters": card["parameters"],
                   "accuracy": card["accuracy"], "train_seconds": round(card["train"]["seconds"], 1),
                   "steps": card["train"]["steps"]}
    parameters = read_card(ROOT / runs[0]["dir"])["parameters"]
    if student is not None:
        student["parameter_ratio"] = student["parameters"] / parameters
    result = {"benchmark": "teacher", **run_info(args.seeds[0]), "seeds": sorted({r["seed"] for r in runs}),
              "smoke": args.smoke, "recipe": _recipe(preset), "parameters": parameters, "runs": runs,
              "answers_only_student": student, "summary": summarise(runs, student)}
    path.write_text(json.dumps(result, indent=2) + "\n")
    tasks = list(runs[0]["accuracy"])
    print(f"\n{'run':<20}" + "".join(f"{t:>9}" for t in tasks) + f"{'train s':>10}")
    for r in runs:
        print(f"{'seed %d, %d thread%s' % (r['seed'], r['threads'], 's' * (r['threads'] > 1)):<20}"
              + "".join(f"{r['accuracy'][t]:>9.1%}" for t in tasks) + f"{r['train_seconds']:>10.0f}")
    s = result["summary"]
    print(f"{'worst':<20}" + "".join(f"{s['worst_accuracy'][t]:>9.1%}" for t in tasks)
          + f"{s['median_train_seconds']:>10.0f} (median)")
    if student is not None:
        print(f"{'answers-only':<20}" + "".join(f"{student['accuracy'][t]:>9.1%}" for t in tasks)
              + f"{student['train_seconds']:>10.0f}")
    print(f"every run meets the targets: {s['every_run_meets_targets']}\nwrote {path.relative_to(ROOT)}")


def _recipe(preset: str) -> dict:
    """What defines the recipe: results of another recipe are never merged with these."""
    recipe = RECIPES[preset]
    return {"preset": preset, "architecture": asdict(get_preset(preset)), "steps": recipe.schedule.steps, "batch_size": recipe.batch_size,
            "lr": recipe.schedule.lr, "tasks": list(recipe.tasks),
            "targets": {"reasoning": recipe.reasoning_target, "open": recipe.open_target}}


if __name__ == "__main__":
    main()
