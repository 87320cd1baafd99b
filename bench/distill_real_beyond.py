"""Part `beyond` of bench/distill_real.py: can a filtered or voted harvest give a student above its teacher?

    python bench/distill_real.py --parts beyond              # seeds 0 1 2 (about 25 minutes on 2 cores)
    python bench/distill_real.py --parts beyond --smoke      # tiny sizes, to keep the part working

1. The teacher's greedy accuracy on 200 held-out prompts at harder difficulties than it was trained on (longer
   chains, longer operands: `chain:steps=6`, ...), to find one where it is below 95%.
2. At the chosen difficulty, three harvests of the same prompts, `--samples 8` at temperature 1: `--verify`
   (the task scorer keeps correct samples), `--vote` (the majority answer's samples), and unfiltered, cut to
   the verified harvest's completion tokens (equal token count). Each records what it kept and dropped, how
   many kept samples are the exact reference trace, and the teacher tokens it consumed (dropped samples too).
3. The same student (`student`, <= 1/10 of the teacher) trained by `sft` on each, over the seeds: median and
   worst accuracy at that difficulty, beside the teacher's greedy accuracy.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from stillwatch.distill.run import DistillConfig, distill
from stillwatch.evaluate import evaluate
from stillwatch.harvest import HarvestStore, harvest, task_source
from stillwatch.harvest.select import Selector
from stillwatch.models import count_parameters, load_model
from stillwatch.tasks import examples, get_task
from stillwatch.teachers.completion import SamplingParams
from stillwatch.teachers.local import LocalTeacher

SIZES = {
    "full": dict(task="chain:steps=6", candidates=["chain:steps=4", "chain:steps=6", "chain:steps=8",
                                                   "add:digits=5", "mul:digits=5"],
                 prompts=1000, samples=8, temperature=1.0, steps=2000, batch_size=16, lr=3e-3, eval_n=200,
                 preset="student"),
    "smoke": dict(task="chain:steps=6", candidates=["chain:steps=6"], prompts=12, samples=2, temperature=1.0,
                  steps=4, batch_size=8, lr=3e-3, eval_n=8, preset="student-tiny"),
}
HARVEST_SEED, EVAL_SEED = 1, 123  # held-out prompts: the harvest never sees the evaluation's
ARMS = ("verify", "vote", "unfiltered")


@dataclass
class _Item:  # what HarvestStore.add reads of a prompt
    prompt_id: str
    position: int
    prompt: str
    task: str | None
    answer: str | None
    messages: None = None


def _rel(path: Path) -> str:
    root = Path(__file__).resolve().parents[1]
    return str(path.resolve().relative_to(root)) if path.resolve().is_relative_to(root) else path.name


def greedy_accuracy(teacher: LocalTeacher, spec: str, n: int) -> float:
    """The teacher's greedy accuracy on `n` held-out prompts of a task at a difficulty."""
    task = get_task(spec)
    exs = examples(task, n, EVAL_SEED)
    outs = teacher.generate([e.prompt for e in exs], SamplingParams(max_tokens=128, temperature=0.0))
    return sum(task.score(e.prompt, o[0].text) for e, o in zip(exs, outs)) / n


def _harvest(teacher: LocalTeacher, spec: str, path: Path, size: dict, selector: Selector | None) -> dict:
    params = SamplingParams(max_tokens=128, temperature=size["temperature"], n=size["samples"], seed=HARVEST_SEED)
    began = time.perf_counter()
    with HarvestStore(path, create=True) as store:
        harvest(teacher, task_source([spec], size["prompts"], HARVEST_SEED), store, params, concurrency=256,
                progress=False, selector=selector)
        meta, rows = store.meta(), list(store.iter_rows(with_top=False))
    refs = {e.prompt: e.trace for e in examples(get_task(spec), size["prompts"], HARVEST_SEED)}
    selection = meta.get("selection") or {"kept": len(rows), "dropped": {},
                                          "consumed": {"completion_tokens": meta.get("completion_tokens", 0)}}
    return {"store": _rel(path), "kept": selection["kept"], "dropped": selection["dropped"],
            "kept_completion_tokens": meta.get("completion_tokens", 0),
            "teacher_tokens_consumed": selection["consumed"]["completion_tokens"],
            "exact_reference_traces": sum(r.completion.text.strip() == refs[r.prompt].strip() for r in rows),
            "seconds": round(time.perf_counter() - began, 1)}


def _equal_tokens(source: Path, out: Path, tokens: int) -> dict:
    """Rows of an unfiltered harvest, sample 0 of every prompt first, until `tokens` completion tokens."""
    out.unlink(missing_ok=True)
    with HarvestStore(source) as src:
        rows = sorted(src.iter_rows(with_top=False), key=lambda r: (r.sample_index, r.prompt_id))
        consumed = src.meta().get("completion_tokens", 0)
    taken, total = [], 0
    for r in rows:
        if total >= tokens:
            break
        taken.append((_Item(r.prompt_id, 0, r.prompt, r.task, r.answer), r.sample_index, r.completion, r.teacher,
                      r.params))
        total += r.completion.completion_tokens
    with HarvestStore(out, create=True) as dst:
        dst.add(taken)
    return {"store": _rel(out), "kept": len(taken), "dropped": {}, "kept_completion_tokens": total,
            "teacher_tokens_consumed": total, "harvested_completion_tokens": consumed}


def _train(arm: str, store: str, spec: str, size: dict, seed: int, out: Path) -> dict:
    torch.set_num_threads(1)
    cfg = DistillConfig(loss="sft", steps=size["steps"], batch_size=size["batch_size"], lr=size["lr"], seed=seed,
                        checkpoint_every=10**9, log_every=100)
    card = distill(store, out, cfg, preset=size["preset"], progress=False)
    model, tok = load_model(out)
    report = evaluate(LocalTeacher(model, tok), [get_task(spec)], n=size["eval_n"], seed=EVAL_SEED,
                      latency_samples=0, throughput_batch=0)
    (accuracy,) = [v["accuracy"] for v in report["tasks"].values()]
    return {"arm": arm, "seed": seed, "accuracy": accuracy, "parameters": count_parameters(model),
            "train_seconds": round(card["train"]["seconds"], 1), "rows_used": card["data"].get("rows")}


def run_beyond(args, size_unused: dict, work: Path, teacher_dir: Path, teacher: dict, previous: dict) -> dict:
    """Part `beyond` (the runner signature of bench/distill_real.py's PARTS)."""
    torch.set_num_threads(1)
    size = SIZES["smoke" if args.smoke else "full"]
    work = work / "beyond"
    work.mkdir(parents=True, exist_ok=True)
    cached = work / "section.json"
    if cached.is_file():  # a finished run of these sizes and seeds: its section again, nothing retrained
        section = json.loads(cached.read_text())
        if section.get("sizes") == size and section.get("seeds") == list(args.seeds):
            section["targets"] = beyond_targets(section, teacher)
            return section
    model, tok = load_model(teacher_dir)
    local = LocalTeacher(model, tok)
    difficulty = {spec: greedy_accuracy(local, spec, size["eval_n"]) for spec in size["candidates"]}
    print(f"teacher greedy accuracy at harder difficulties: {difficulty}", flush=True)
    spec = size["task"]
    teacher_acc = difficulty.get(spec, greedy_accuracy(local, spec, size["eval_n"]))
    harvests = {
        "verify": _harvest(local, spec, work / "verify.db", size, Selector(verify=True)),
        "vote": _harvest(local, spec, work / "vote.db", size, Selector(vote=True)),
    }
    everything = _harvest(local, spec, work / "all.db", size, None)
    # Equal to the verified harvest's tokens (the vote's where verification kept nothing).
    target = harvests["verify"]["kept_completion_tokens"] or harvests["vote"]["kept_completion_tokens"]
    harvests["unfiltered"] = {**_equal_tokens(work / "all.db", work / "unfiltered.db", target),
                              "exact_reference_traces_in_full_harvest": everything["exact_reference_traces"]}
    for arm, info in harvests.items():
        print(f"{arm:<11} kept {info['kept']:>6} rows ({info['kept_completion_tokens']:,} tokens), dropped "
              f"{info['dropped']}, teacher tokens consumed {info['teacher_tokens_consumed']:,}", flush=True)
    runs = []
    for arm in ARMS:
        if harvests[arm]["kept"] == 0:
            continue
        for seed in args.seeds:
            run = _train(arm, str(work / f"{arm}.db"), spec, size, seed, work / f"{arm}-seed{seed}")
            run["teacher_tokens"] = harvests[arm]["teacher_tokens_consumed"]
            runs.append(run)
            print(f"{arm:<11} seed {seed}: {spec} accuracy {run['accuracy']:.1%} (teacher greedy {teacher_acc:.1%})",
                  flush=True)
    students = {}
    for arm in ARMS:
        accs = [r["accuracy"] for r in runs if r["arm"] == arm]
        if accs:
            students[arm] = {"median_accuracy": statistics.median(accs), "worst_accuracy": min(accs),
                             "seeds": [r["seed"] for r in runs if r["arm"] == arm],
                             "teacher_tokens": harvests[arm]["teacher_tokens_consumed"],
                             "rows": harvests[arm]["kept"]}
    section = {
        "task": spec, "seeds": list(args.seeds), "teacher_greedy_accuracy": teacher_acc, "teacher_greedy_by_difficulty": difficulty,
        "sizes": size, "harvests": harvests, "students": students, "runs": runs,
    }
    section["targets"] = beyond_targets(section, teacher)
    cached.write_text(json.dumps(section, indent=2) + "\n")
    return section


def beyond_targets(section: dict, teacher: dict) -> dict:
    """The goal, read with the noise of `eval_n` prompts: a filtered student above the teacher's greedy accuracy
    on its worst seed by more than two standard errors of that accuracy; and the chance level (a guessed digit
    is right one time in ten on chain) beside it, since near chance neither has learned the task."""
    t, n = section["teacher_greedy_accuracy"], section["sizes"]["eval_n"]
    se = math.sqrt(max(t * (1 - t), 1 / n) / n)
    filtered = {a: s for a, s in section["students"].items() if a in ("verify", "vote")}
    runs = section.get("runs", [])
    return {
        "teacher_below_95_percent": t < 0.95,
        "teacher_greedy_standard_error": se,
        "chance_accuracy": 0.1 if section["task"].startswith("chain") else None,
        "filtered_student_beats_teacher_greedy_worst_seed": any(s["worst_accuracy"] > t for s in filtered.values()),
        "filtered_student_beats_teacher_greedy_worst_seed_by_2_se": any(
            s["worst_accuracy"] > t + 2 * se for s in filtered.values()),
        "unfiltered_median_accuracy": section["students"].get("unfiltered", {}).get("median_accuracy"),
        "parameter_ratio": max((r["parameters"] for r in runs), default=0) / teacher["parameters"],
    }


def print_beyond(section: dict) -> None:
    """The part's table."""
    print(f"\n[beyond] {section['task']}: teacher greedy {section['teacher_greedy_accuracy']:.1%}")
    print(f"{'harvest':<12}{'rows':>8}{'teacher tok':>13}{'median':>9}{'worst':>8}")
    for arm, s in section["students"].items():
        print(f"{arm:<12}{s['rows']:>8}{s['teacher_tokens']:>13,}{s['median_accuracy']:>9.1%}{s['worst_accuracy']:>8.1%}")
