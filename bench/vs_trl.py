"""Benchmark: stillwatch distill against TRL on the same teacher data, student, steps and seeds; writes vs_trl.json.

    python bench/vs_trl.py                 # full size, student seeds 0, 1, 2 (about an hour on 2 shared CPU cores)
    python bench/vs_trl.py --seeds 0       # one seed
    python bench/vs_trl.py --smoke         # tiny sizes, to keep the script working in CI

Two jobs, each run by both tools in this one process:
  * sequence-level KD (SFT on the teacher's completions): TRL `SFTTrainer` vs `stillwatch distill --loss sft`;
  * white-box logit KD (forward KL on the in-process teacher's full logits, off-policy): TRL's `GKDTrainer`
    with lmbda = 0 and beta = 0 vs `stillwatch distill --loss kd --teacher DIR`.
One harvest serves every run: reasoning tasks greedy, the open story task sampled at temperature 1 (as it is
evaluated, and as the retention benchmark harvests it). A seed is the student's: its initialisation and batch
order. Every seed trains each (job, tool) once, the two tools of a job back to back, so a seed's speed-up
compares runs that met the same load on the shared machine; the speed-up reported is the median over seeds.
Both tools get the identical token ids (prompt + completion + eos, loss on the completion only, right-padded),
the same freshly initialised student (same preset and seed), AdamW (betas 0.9/0.98, weight decay 0.01), cosine
schedule with the same warm-up, gradient clipping 1.0, batch size, steps and seed. Wall time covers training
only; tokens/s counts completion tokens trained on. Accuracy is greedy on held-out prompts for the reasoning
tasks, nucleus-sampled for the story, and reported per seed with its median and worst.
TRL is a benchmark-only dependency: `pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from stillwatch.distill.data import RowSource  # noqa: E402
from stillwatch.distill.run import DistillConfig, distill  # noqa: E402
from stillwatch.evaluate import evaluate  # noqa: E402
from stillwatch.harvest import HarvestStore, harvest, task_source, tokenizer_info  # noqa: E402
from stillwatch.models import BUILTIN, build_model, count_parameters, load_model, resolve_model_dir  # noqa: E402
from stillwatch.runinfo import run_info  # noqa: E402
from stillwatch.tasks import REASONING_TASKS, TASK_NAMES, get_tasks  # noqa: E402
from stillwatch.teach import teach  # noqa: E402
from stillwatch.teachers.completion import SamplingParams  # noqa: E402
from stillwatch.teachers.local import LocalTeacher  # noqa: E402

SIZES = {  # rows harvested per task, steps, batch size, eval prompts per task, student seeds
    # 2,000 steps: enough for these students to learn part of the reasoning tasks, so accuracy can be compared
    "full": dict(rows_per_task=1000, steps=2000, batch_size=32, eval_n=200, seeds=(0, 1, 2)),
    "smoke": dict(rows_per_task=24, steps=8, batch_size=8, eval_n=8, seeds=(0,)),
}
LR, WARMUP = 3e-3, 30  # the distiller's own rate: at 1e-2 these students never learn the digit lookups


def ensure_teacher(path: Path, smoke: bool, seed: int) -> Path:
    """The shipped default teacher (or `path`), or a few-step tiny one for --smoke."""
    path = resolve_model_dir(path)
    if (path / "config.json").is_file():
        return path
    print(f"training teacher into {path} ...", flush=True)
    teach(path, preset="tiny" if smoke else "default", seed=seed, steps=30 if smoke else None,
          eval_n=10 if smoke else 200)
    return path


def harvest_store(teacher: LocalTeacher, path: Path, rows_per_task: int, seed: int, top_k: int = 0) -> Path:
    """Teacher completions for `rows_per_task` prompts of every task: reasoning greedy, the open task sampled.

    A greedy story harvest holds one story per topic (16 in all). Sequence KD copies those and stays valid when
    sampled, but logit KD learns the teacher's whole next-token distribution along those few paths only, and a
    sampled student leaves them at its first word: both tools' white-box students then wrote no valid story.
    """
    with HarvestStore(path, create=True) as store:
        store.record_teacher(teacher.name, {"tokenizer": tokenizer_info(teacher.tokenizer)})
        kinds = {t.name: t.kind for t in get_tasks(list(TASK_NAMES))}
        for names, temperature in (([t for t in TASK_NAMES if kinds[t] == "reasoning"], 0.0),
                                   ([t for t in TASK_NAMES if kinds[t] != "reasoning"], 1.0)):
            harvest(teacher, task_source(names, rows_per_task, seed), store,
                    SamplingParams(max_tokens=96, temperature=temperature, seed=seed, top_logprobs=top_k),
                    concurrency=256, progress=False)
    return path


def trl_dataset(store: Path, tokenizer, seed: int, positions: int):
    """Pre-tokenized rows (input_ids + completion_mask): the ids stillwatch trains on, in the order it does.

    Row p is position p of stillwatch's seeded, epoch-shuffled stream for this seed, and TRL reads them in
    order, so step s of both tools is the same batch. With each tool shuffling by its own generator, the data
    order alone moved one seed's mean reasoning accuracy from 22% to 47%, which hides any difference between
    the training loops themselves; the seeds still vary the order and the initialisation together.
    """
    from datasets import Dataset

    source = RowSource(store, tokenizer, seed=seed, with_top=False)
    rows = [source.row_at(p) for p in range(positions)]
    source.close()
    return Dataset.from_list([{"prompt": r.prompt,
                               "input_ids": [*r.prompt_ids.tolist(), *r.completion_ids.tolist()],
                               "completion_mask": [0] * len(r.prompt_ids) + [1] * len(r.completion_ids)}
                              for r in rows])


def trl_args(cls, out: Path, size: dict, seed: int, **extra):
    return cls(output_dir=str(out), max_steps=size["steps"], per_device_train_batch_size=size["batch_size"],
               learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP, weight_decay=0.01,
               adam_beta1=0.9, adam_beta2=0.98, max_grad_norm=1.0, seed=seed, data_seed=seed, use_cpu=True,
               bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=50,
               dataloader_num_workers=0, disable_tqdm=True, max_length=256,
               train_sampling_strategy="sequential",  # the dataset is already in stillwatch's batch order
               **extra)


class _Timer:
    """Training wall time and completion tokens, from TRL's own step callbacks."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, *a, **k):
                outer.began = time.perf_counter()

            def on_train_end(self, *a, **k):
                outer.seconds = time.perf_counter() - outer.began

        self.callback, self.began, self.seconds = Callback(), 0.0, 0.0


def run_trl_sft(student, tokenizer, dataset, out: Path, size: dict, seed: int) -> dict:
    from trl import SFTConfig, SFTTrainer

    timer = _Timer()
    args = trl_args(SFTConfig, out, size, seed, completion_only_loss=True, packing=False)
    trainer = SFTTrainer(model=student, args=args, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer.callback])
    trainer.train()
    return {"seconds": timer.seconds}


def right_padded(collator):
    """TRL's ChatML collator, with each batch's rows moved to the left (right padding).

    It pads on the left, for generation, but a training forward numbers positions 0, 1, ... whatever the mask:
    these students and the teacher learn absolute positions, so a shorter row would reach both at shifted
    positions, and the student would learn from teacher logits the teacher never produces at those positions.
    Off-policy GKD needs no prompt batch, so right padding changes nothing else.
    """
    from trl.trainer.utils import flush_left

    def collate(examples: list[dict]) -> dict:
        batch = collator(examples)
        mask, ids, labels = flush_left(batch["attention_mask"], batch["input_ids"], batch["labels"])
        return {**batch, "attention_mask": mask, "input_ids": ids, "labels": labels}

    return collate


def run_trl_gkd(student, teacher_model, tokenizer, dataset, out: Path, size: dict, seed: int) -> dict:
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from trl.experimental.utils import DataCollatorForChatML

    timer = _Timer()
    # lmbda = 0: never on-policy (pure supervised KD); beta = 0: forward KL(teacher || student); T = 1.
    args = trl_args(GKDConfig, out, size, seed, lmbda=0.0, beta=0.0, temperature=1.0, seq_kd=False)
    trainer = GKDTrainer(model=student, teacher_model=teacher_model, args=args, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[timer.callback],
                         data_collator=right_padded(DataCollatorForChatML(tokenizer, max_length=args.max_length)))
    trainer.train()
    return {"seconds": timer.seconds}


def accuracy(model, tokenizer, eval_n: int) -> dict:
    report = evaluate(LocalTeacher(model.eval(), tokenizer), get_tasks(list(TASK_NAMES)), n=eval_n, latency_samples=0,
                      throughput_batch=0)
    return {name: r["accuracy"] for name, r in report["tasks"].items()}


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers separated by commas, not {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs distinct integers, not {text!r}")
    return seeds


def spread(values: list[float]) -> dict:
    """Median and worst (lowest) of per-seed values, beside the values themselves."""
    return {"median": statistics.median(values), "worst": min(values), "seeds": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a minute not an hour")
    parser.add_argument("--seeds", type=_seeds, default=None,
                        help="student seeds, comma-separated (default 0,1,2; --smoke: 0)")
    parser.add_argument("--harvest-seed", type=int, default=0,
                        help="the teacher's sampling seed (one harvest serves every run)")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher directory (default: the shipped teacher)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these sizes on a shared box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = SIZES["smoke" if args.smoke else "full"]
    seeds = args.seeds or list(size["seeds"])
    torch.manual_seed(args.harvest_seed)

    work = ROOT / "runs" / ("bench-vs-trl-smoke" if args.smoke else "bench-vs-trl")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    teacher_dir = ensure_teacher(args.teacher or (ROOT / "runs" / "teacher-smoke" if args.smoke else Path(BUILTIN)),
                                 args.smoke, args.harvest_seed)
    teacher = LocalTeacher.from_dir(teacher_dir)
    tokenizer = teacher.tokenizer
    store = harvest_store(teacher, work / "harvest.db", size["rows_per_task"], args.harvest_seed)
    source = RowSource(store, tokenizer, with_top=False)
    stored = [source.row_at(i) for i in range(source.n)]
    source.close()
    mean_completion = sum(len(r.completion_ids) for r in stored) / len(stored)
    student_preset = "student-tiny" if args.smoke else "student"
    teacher_accuracy = accuracy(teacher.model, tokenizer, size["eval_n"])

    def train_once(job: str, tool: str, seed: int, out: Path) -> tuple[dict, torch.nn.Module]:
        shutil.rmtree(out, ignore_errors=True)
        if tool == "stillwatch":
            cfg = DistillConfig(loss="sft" if job == "sft" else "kd", divergence="forward", steps=size["steps"],
                                batch_size=size["batch_size"], lr=LR, warmup=WARMUP, seed=seed,
                                checkpoint_every=10**9, log_every=50)
            card = distill(store, out, cfg, preset=student_preset, teacher=teacher_dir if job != "sft" else None,
                           progress=False)
            model, _ = load_model(out)
            return {"seconds": card["train"]["seconds"], "final_loss": card["train"]["final_loss"],
                    "tokens_trained": card["train"]["tokens"]}, model
        model = build_model(student_preset, tokenizer, seed=seed)  # the same initial weights
        dataset = trl_dataset(store, tokenizer, seed, size["steps"] * size["batch_size"])
        trained_tokens = sum(sum(m) for m in dataset["completion_mask"])
        if job == "sft":
            row = run_trl_sft(model, tokenizer, dataset, out, size, seed)
        else:
            teacher_model, _ = load_model(teacher_dir)
            row = run_trl_gkd(model, teacher_model, tokenizer, dataset, out, size, seed)
        return {**row, "tokens_trained": round(trained_tokens)}, model

    runs: dict[str, list[dict]] = {}
    for seed in seeds:
        for job, tool in [("sft", "stillwatch"), ("sft", "trl"), ("kd-whitebox", "stillwatch"), ("kd-whitebox", "trl")]:
            print(f"== {job} / {tool} (seed {seed})", flush=True)
            row, model = train_once(job, tool, seed, work / f"{job}-{tool}")
            row["seed"] = seed
            row["tokens_per_s"] = row["tokens_trained"] / row["seconds"] if row["seconds"] else None
            row["accuracy"] = accuracy(model, tokenizer, size["eval_n"])
            row["reasoning_accuracy"] = sum(row["accuracy"][t] for t in REASONING_TASKS) / len(REASONING_TASKS)
            row["parameters"] = count_parameters(model)
            runs.setdefault(f"{job}/{tool}", []).append(row)
            print(json.dumps(row), flush=True)

    tasks = list(TASK_NAMES)
    results: dict[str, dict] = {}
    for key, rows in runs.items():
        results[key] = {"seconds": {"median": statistics.median(r["seconds"] for r in rows),
                                    "seeds": [r["seconds"] for r in rows]},
                        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                        "reasoning_accuracy": spread([r["reasoning_accuracy"] for r in rows]),
                        "accuracy": {t: spread([r["accuracy"][t] for r in rows]) for t in tasks},
                        "parameters": rows[0]["parameters"], "runs": rows}
    held = [t for t in tasks if teacher_accuracy[t] > 0]
    comparison = {}
    for job in ("sft", "kd-whitebox"):
        ours, theirs = runs[f"{job}/stillwatch"], runs[f"{job}/trl"]
        # Each seed's two runs were back to back, so their ratio saw the same load on the shared machine.
        speedup = statistics.median(t["seconds"] / o["seconds"] for o, t in zip(ours, theirs))
        delta = (results[f"{job}/stillwatch"]["reasoning_accuracy"]["median"]
                 - results[f"{job}/trl"]["reasoning_accuracy"]["median"])
        lost = {tool: [t for t in held if min(r["accuracy"][t] for r in runs[f"{job}/{tool}"]) == 0]
                for tool in ("stillwatch", "trl")}
        comparison[job] = {"speedup": speedup,
                           "speedup_seeds": [t["seconds"] / o["seconds"] for o, t in zip(ours, theirs)],
                           "accuracy_delta": delta, "at_least_as_accurate": delta >= 0,
                           "at_least_1_5x_faster": speedup >= 1.5, "tasks_lost": lost,
                           "no_task_lost": not lost["stillwatch"]}
    import trl

    result = {
        "benchmark": "vs_trl",
        **run_info(seeds[0]),
        "seeds": seeds,
        "harvest_seed": args.harvest_seed,
        "smoke": args.smoke,
        "sizes": {**size, "seeds": seeds, "rows": len(stored), "threads": args.threads,
                  "student_preset": student_preset, "lr": LR, "warmup": WARMUP,
                  "teacher": str(teacher_dir.relative_to(ROOT) if teacher_dir.is_relative_to(ROOT) else teacher_dir),
                  "mean_completion_tokens": mean_completion},
        "versions": {"trl": trl.__version__, "torch": torch.__version__},
        "teacher_accuracy": teacher_accuracy,
        "results": results,
        "comparison": comparison,
        "notes": ("speed-up: median over seeds of TRL's wall time over stillwatch's, each seed's pair run back to "
                  "back; accuracy: median and worst over the student seeds; a task is lost when a seed scores 0 "
                  "on it where the teacher scores above 0"),
    }
    out = ROOT / "bench" / "results" / ("vs_trl-smoke.json" if args.smoke else "vs_trl.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nmedian / worst of {len(seeds)} seeds; teacher "
          + ", ".join(f"{t} {teacher_accuracy[t]:.1%}" for t in tasks))
    print(f"{'job / tool':<26}{'wall s':>9}{'tok/s':>10}{'reasoning':>16}" + "".join(f"{t:>16}" for t in tasks))
    for name, row in results.items():
        cells = [row["reasoning_accuracy"]] + [row["accuracy"][t] for t in tasks]
        print(f"{name:<26}{row['seconds']['median']:>9.1f}{row['tokens_per_s']:>10.0f}"
              + "".join(f"{c['median']:>9.1%} /{c['worst']:>5.1%}" for c in cells))
    for job, c in comparison.items():
        print(f"{job}: stillwatch {c['speedup']:.2f}x faster, median reasoning accuracy {c['accuracy_delta']:+.1%}, "
              f"tasks lost {c['tasks_lost']}")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
