"""Benchmark: train the default teacher and an answers-only student at 1/10 of its size; write teacher.json.

    python bench/teacher.py            # full: default teacher, the numbers the README quotes
    python bench/teacher.py --smoke    # tiny sizes, to keep the script working in CI
    python bench/teacher.py --reuse DIR   # take a teacher that `stillwatch teach` already trained (its card
                                          # holds the accuracy and the train time teach measured)
    python bench/teacher.py --torchrun 2  # add to teacher.json a second training of the same schedule with
                                          # torchrun, one process per core (the machine otherwise idle)

The teacher is also left in runs/teacher-default for the other benchmarks and the demo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stillwatch.evaluate import evaluate  # noqa: E402
from stillwatch.models import read_card  # noqa: E402
from stillwatch.runinfo import run_info  # noqa: E402
from stillwatch.tasks import REASONING_TASKS, get_tasks  # noqa: E402
from stillwatch.teach import teach  # noqa: E402
from stillwatch.teachers.local import LocalTeacher  # noqa: E402

TARGET_REASONING, TARGET_OPEN, TARGET_SECONDS = 0.98, 0.99, 600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds not minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-n", type=int, default=500)
    parser.add_argument("--reuse", type=Path, help="a teacher directory trained by `stillwatch teach`")
    parser.add_argument("--torchrun", type=int, metavar="N", help="only time a training under torchrun with N "
                        "processes and add it to the existing results")
    args = parser.parse_args()
    if args.torchrun:
        return time_torchrun(args.torchrun, args.smoke, args.seed)

    runs = ROOT / "runs"
    teacher_dir = runs / ("teacher-smoke" if args.smoke else "teacher-default")
    student_dir = runs / ("answers-only-smoke" if args.smoke else "answers-only-student")
    for d in (student_dir,) if args.reuse and args.reuse.resolve() == teacher_dir.resolve() else (teacher_dir, student_dir):
        shutil.rmtree(d, ignore_errors=True)
    preset, student_preset = ("tiny", "student-tiny") if args.smoke else ("default", "student")
    steps = 30 if args.smoke else None
    eval_n = 20 if args.smoke else args.eval_n

    if args.reuse:
        if args.reuse.resolve() != teacher_dir.resolve():
            shutil.copytree(args.reuse, teacher_dir)
        teacher = read_card(teacher_dir)  # its train time as `teach` measured it; accuracy measured again here
        preset = teacher["preset"]
        report = evaluate(LocalTeacher.from_dir(teacher_dir), get_tasks(), n=eval_n, latency_samples=0,
                          throughput_batch=0)  # only the accuracy is reported
        teacher["accuracy"] = {name: row["accuracy"] for name, row in report["tasks"].items()}
    else:
        teacher = teach(teacher_dir, preset=preset, seed=args.seed, steps=steps, eval_n=eval_n, progress=True)
    # The same number of steps and batches on ground-truth answers without the trace.
    student = teach(student_dir, preset=student_preset, seed=args.seed, steps=teacher["train"]["steps"],
                    answers_only=True, eval_n=eval_n, progress=True, tokenizer_from=teacher_dir)

    below_half = [t for t in REASONING_TASKS if student["accuracy"][t] < 0.5]
    result = {
        "benchmark": "teacher",
        **run_info(args.seed),
        "smoke": args.smoke,
        "teacher": {"preset": preset, "parameters": teacher["parameters"], "accuracy": teacher["accuracy"],
                    "train_seconds": round(teacher["train"]["seconds"], 1), "steps": teacher["train"]["steps"],
                    "batch_size": teacher["train"]["batch_size"], "eval_n": eval_n,
                    "trained_by": teacher["command"], "machine": teacher.get("machine")},
        "answers_only_student": {"preset": student_preset, "parameters": student["parameters"],
                                 "parameter_ratio": student["parameters"] / teacher["parameters"],
                                 "accuracy": student["accuracy"],
                                 "train_seconds": round(student["train"]["seconds"], 1)},
        "targets": {
            "teacher_reasoning_ge_98": all(teacher["accuracy"][t] >= TARGET_REASONING for t in REASONING_TASKS),
            "teacher_open_ge_99": teacher["accuracy"]["story"] >= TARGET_OPEN,
            "teacher_train_le_600s": teacher["train"]["seconds"] <= TARGET_SECONDS,
            "answers_only_below_50_on_two": len(below_half) >= 2,
            "answers_only_below_50_tasks": below_half,
        },
    }
    out = ROOT / "bench" / "results" / ("teacher-smoke.json" if args.smoke else "teacher.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'model':<24}{'params':>10}" + "".join(f"{t:>9}" for t in teacher["accuracy"]) + f"{'train s':>10}")
    for label, card in (("teacher " + preset, teacher), ("answers-only " + student_preset, student)):
        print(f"{label:<24}{card['parameters']:>10,}" + "".join(f"{a:>9.1%}" for a in card["accuracy"].values())
              + f"{card['train']['seconds']:>10.0f}")
    print(f"targets: {result['targets']}\nwrote {out.relative_to(ROOT)}")


def time_torchrun(processes: int, smoke: bool, seed: int) -> None:
    """Train the same teacher schedule under torchrun (gloo, one thread per process) and record time and accuracy."""
    out_dir = ROOT / "runs" / ("teacher-torchrun-smoke" if smoke else "teacher-torchrun")
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "stillwatch", "teach", "--out", str(out_dir), "--seed", str(seed),
               *(["--preset", "tiny", "--steps", "30", "--eval-n", "20"] if smoke else [])]
    subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    card = read_card(out_dir)
    path = ROOT / "bench" / "results" / ("teacher-smoke.json" if smoke else "teacher.json")
    result = json.loads(path.read_text())
    result["teacher_torchrun"] = {"processes": processes, "accuracy": card["accuracy"], "eval_n": card["eval_n"],
                                  "train_seconds": round(card["train"]["seconds"], 1), "steps": card["train"]["steps"],
                                  "command": "python bench/teacher.py --torchrun " + str(processes),
                                  "git_commit": card["git_commit"], "machine": card["machine"]}
    result["targets"]["teacher_train_le_600s_torchrun"] = card["train"]["seconds"] <= TARGET_SECONDS
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"torchrun x{processes}: {card['train']['seconds']:.0f} s, accuracy {card['accuracy']}\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
