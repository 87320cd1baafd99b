"""Benchmark: distil from a real API, across tokenizer families; distill_real.json.

    python bench/distill_real.py --jobs 2                         # every part, seeds 0 1 2 (a few CPU-minutes a student)
    python bench/distill_real.py --parts cross --rows xkd@250 --seeds 3    # a part, some rows; results merge
    python bench/distill_real.py --smoke                          # tiny sizes, to keep the script working in CI

Parts (`--parts`; each writes its own section of the results file and leaves the others as they are):
  * cross: the teacher (`builtin`, tokenizer A) is served by a stillwatch gateway on 127.0.0.1 and harvested
    black-box through the official `openai` client: chat completions, top-20 logprobs, reasoning tasks greedy
    and the story sampled at temperature 1. Students at about 1/10 of the teacher's parameters learn only from
    that harvest: `student-b` (tokenizer B: "▁" spaces after words, pieces across words) by cross-tokenizer
    `kd` (xkd, the top 20 aligned onto B, see stillwatch/distill/align.py) and by `sft` on the re-encoded text
    (xsft), and, for the gain that same-tokenizer kd has over sft, `student` (tokenizer A) by `kd` and `sft` on
    the same harvest.
  * beyond (bench/distill_real_beyond.py): where the teacher is below 95% (a harder difficulty), the same
    student trained on a `--verify`, a `--vote` and an unfiltered harvest of equal token count, against the
    teacher's own greedy accuracy.

Part cross has retention.py's size (12,000 steps x 16; a harvest of 4,000 prompts per task, whose first 1,000
are retention.py's best row); `--harvest-prompts` and `--steps` shrink it. Every student trains as
`stillwatch distill --steps S --batch-size 16` does, one torch thread each; a seed is the student's
(initialisation and batch order; the harvest stays the same). Each row reports the median and
the worst seed and the teacher tokens it consumed (completion tokens of the harvested rows it trained on).
Retention = student / teacher greedy accuracy per reasoning task on 200 held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sqlite3
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from retention import _shown, by_row, ensure_teacher, row_name, summarise, tokens_to_reach  # noqa: E402
from distill_real_beyond import print_beyond, run_beyond  # noqa: E402  (part `beyond`: filtered harvests)
from stillwatch.distill.run import DistillConfig, distill  # noqa: E402
from stillwatch.evaluate import evaluate  # noqa: E402
from stillwatch.harvest import HarvestStore, harvest, task_source, tokenizer_info  # noqa: E402
from stillwatch.models import count_parameters, load_model, read_card  # noqa: E402
from stillwatch.runinfo import run_info  # noqa: E402
from stillwatch.tasks import REASONING_TASKS, TASK_NAMES, get_tasks  # noqa: E402
from stillwatch.teachers.completion import SamplingParams  # noqa: E402
from stillwatch.teachers.local import LocalTeacher  # noqa: E402
from stillwatch.tokenizer import token_strings  # noqa: E402

OUT = ROOT / "bench" / "results"
SIZES = {
    # retention.py's budget, so that the cross-tokenizer rows compare with its same-tokenizer ones; 4,000
    # prompts per task so that sft can be given four times the teacher tokens kd gets at 1,000
    "full": dict(harvest_prompts=4000, steps=12000, batch_size=16, lr=3e-3, eval_n=200, top_k=20),
    "smoke": dict(harvest_prompts=16, steps=6, batch_size=8, lr=3e-3, eval_n=8, top_k=4),
}
TARGETS = {"cross_kd_retention": 0.97, "sft_retention_for_tokens": 0.95, "token_ratio": 0.25, "gain_recovered": 0.9}


# -- the harvest: a stillwatch gateway on loopback, harvested black-box -----------------------------------------

def gateway_harvest(teacher_dir: Path, work: Path, store_path: Path, prompts: int, top_k: int) -> dict:
    """Serve the teacher through a loopback gateway and harvest every task through the official client."""
    from stillwatch.guard.accounts import AccountStore
    from stillwatch.guard.app import create_app
    from stillwatch.guard.db import make_engine
    from stillwatch.guard.loopback import LoopbackServer
    from stillwatch.guard.settings import GuardSettings
    from stillwatch.teachers.openai_teacher import OpenAITeacher

    class BenchSettings(GuardSettings):  # these values only, whatever STILLWATCH_* the shell has
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, **sources):  # type: ignore[override]
            return (init_settings,)

    db_url = f"sqlite:///{work / 'gateway.db'}"
    # The harvesting account has no rate limit: at the default 600 requests a minute the harvest's retries ran
    # out on some prompts, and a harvest with holes makes "the first n prompts" a different set once resumed.
    quotas = work / "quotas.toml"
    quotas.write_text('[accounts.distiller]\nrequests = "unlimited"\ntokens = "unlimited"\n')
    # Detection off: this measures distillation, and the gateway would (rightly) block a bulk harvester.
    settings = BenchSettings(teacher=teacher_dir, db_url=db_url, served_model_name="stillwatch", detection=False,
                             max_batch=256, batch_wait_ms=5.0, quotas_file=quotas)
    reasoning = [t.name for t in get_tasks(list(TASK_NAMES)) if t.kind == "reasoning"]
    others = [t for t in TASK_NAMES if t not in reasoning]
    with LoopbackServer(create_app(settings)) as server, HarvestStore(store_path, create=True) as store:
        engine = make_engine(db_url)  # after start-up, which migrates the gateway's database
        try:
            _, key = AccountStore(engine).create_key("distiller")
        finally:
            engine.dispose()
        client = OpenAITeacher(server.base_url, key, model="stillwatch", api="chat", concurrency=128)
        _, teacher_tok = load_model(teacher_dir)
        # The teacher's published vocabulary goes with the harvest: an endpoint that returns token ids (as this
        # client asks, vLLM-style) needs it to spell them; the student never loads the teacher's tokenizer.
        store.record_teacher(client.name, {"tokenizer": {**tokenizer_info(teacher_tok),
                                                         "tokens": token_strings(teacher_tok)}})
        for names, temperature in ((reasoning, 0.0), (others, 1.0)):
            harvest(client, task_source(names, prompts, 0), store,
                    SamplingParams(max_tokens=96, temperature=temperature, seed=0, top_logprobs=top_k),
                    concurrency=128, progress=False)
        return {"endpoint": "stillwatch gateway on 127.0.0.1 (local backend), chat completions",
                "prompts_per_task": prompts, "top_logprobs": top_k, "rows": store.count(),
                "completion_tokens": store.meta().get("completion_tokens")}


def subset_store(source: Path, out: Path, n: int) -> Path:
    """A copy of the harvest with the first `n` prompts of every task: larger subsets contain the smaller ones."""
    if out.is_file() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    out.with_suffix(".tmp").unlink(missing_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(out.with_suffix(".tmp"))
    src.backup(dst)  # the WAL's pages included
    src.close()
    dst.execute("DELETE FROM samples WHERE id NOT IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                "(PARTITION BY task ORDER BY position, sample_index) AS r FROM samples) WHERE r <= ?)", (n,))
    prompt_tokens, completion_tokens = dst.execute(
        "SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM samples").fetchone()
    dst.executemany("UPDATE meta SET value = ? WHERE key = ?", [(str(prompt_tokens), "prompt_tokens"),
                                                                (str(completion_tokens), "completion_tokens")])
    dst.commit()
    dst.execute("VACUUM")
    dst.close()
    out.with_suffix(".tmp").rename(out)
    return out


# -- students ------------------------------------------------------------------------------------------------

# method -> (distill loss, student preset); x* rows cross tokenizers (teacher A, student B).
METHODS = {"xkd": ("kd", "student-b"), "xsft": ("sft", "student-b"), "kd": ("kd", "student"), "sft": ("sft", "student")}
SMOKE_PRESETS = {"student-b": "student-b", "student": "student-tiny"}


def train_job(job: dict) -> dict:
    """One student (a worker process): distil it from its harvest subset, save it, and score it."""
    torch.set_num_threads(1)
    out, size, seed = Path(job["out"]), job["size"], job["seed"]
    shutil.rmtree(out, ignore_errors=True)
    loss, preset = METHODS[job["method"]]
    if job["smoke"]:
        preset = SMOKE_PRESETS[preset]
    cfg = DistillConfig(loss=loss, steps=size["steps"], batch_size=size["batch_size"], lr=size["lr"], seed=seed,
                        checkpoint_every=10**9, log_every=100)
    card = distill(job["store"], out, cfg, preset=preset, progress=False)
    model, tokenizer = load_model(out)
    report = evaluate(LocalTeacher(model, tokenizer), get_tasks(list(TASK_NAMES)), n=size["eval_n"],
                      latency_samples=0, throughput_batch=0)
    return {"method": job["method"], "prompts_per_task": job["prompts"], "seed": seed, "dir": _shown(out),
            "preset": preset, "loss": loss, "teacher_tokens": card["teacher_tokens"]["total"],
            "train_seconds": round(card["train"]["seconds"], 1), "aligned": card["data"].get("aligned"),
            "accuracy": {k: v["accuracy"] for k, v in report["tasks"].items()}, "parameters": count_parameters(model)}


def mean_reasoning(accuracy: dict) -> float:
    return statistics.mean(accuracy[t] for t in REASONING_TASKS)


def cross_targets(rows: dict[str, dict], runs: list[dict]) -> dict:
    """The three cross-tokenizer goals, read off the rows (worst seed where the goal says so)."""
    def get(method: str, prompts: int) -> dict | None:
        return rows.get(row_name(method, prompts))

    xkd = [r for r in rows.values() if r["method"] == "xkd"]
    best = max(xkd, key=lambda r: (r["worst_min_reasoning_retention"], -r["teacher_tokens"])) if xkd else None
    kd_tokens = tokens_to_reach(rows, "xkd", TARGETS["sft_retention_for_tokens"])
    sft_tokens = tokens_to_reach(rows, "xsft", TARGETS["sft_retention_for_tokens"])
    sft_sizes = [r["teacher_tokens"] for r in rows.values() if r["method"] == "xsft"]
    # sft never at 95%: it needs more than its largest harvest, so a quarter of that is a bound kd must meet
    sft_bound = sft_tokens or (max(sft_sizes) if sft_sizes else None)
    gains = {}
    for prompts in sorted({r["prompts_per_task"] for r in rows.values()}):
        quad = [get(m, prompts) for m in ("xkd", "xsft", "kd", "sft")]
        if all(quad):
            med = [mean_reasoning(q["median_accuracy"]) for q in quad]
            worst = [q["worst_min_reasoning_retention"] for q in quad]
            same_med, same_worst = med[2] - med[3], worst[2] - worst[3]
            gains[str(prompts)] = {
                "median_mean_reasoning_accuracy": {"xkd": med[0], "xsft": med[1], "kd": med[2], "sft": med[3]},
                "recovered_median": (med[0] - med[1]) / same_med if same_med > 0 else None,
                "worst_min_retention": {"xkd": worst[0], "xsft": worst[1], "kd": worst[2], "sft": worst[3]},
                "recovered_worst": (worst[0] - worst[1]) / same_worst if same_worst > 0 else None,
            }
    recovered = [g[k] for g in gains.values() for k in ("recovered_median", "recovered_worst") if g[k] is not None]
    return {
        "best_cross_kd_row": row_name(best["method"], best["prompts_per_task"]) if best else None,
        "best_cross_kd_seeds": best["seeds"] if best else None,
        "cross_kd_worst_seed_min_reasoning_retention": best["worst_min_reasoning_retention"] if best else None,
        "cross_kd_ge_97_every_reasoning_task_worst_seed": bool(best) and best["worst_min_reasoning_retention"] >= 0.97,
        "teacher_tokens_to_95_retention": {"xkd": kd_tokens, "xsft": sft_tokens if sft_tokens or sft_bound is None
                                           else f"> {sft_bound}"},
        "cross_kd_95_with_quarter_of_cross_sft_tokens": bool(kd_tokens and sft_bound
                                                             and kd_tokens <= sft_bound * TARGETS["token_ratio"]),
        "gain_over_sft": gains,
        "cross_kd_recovers_90_percent_of_same_tokenizer_gain": bool(recovered) and min(recovered) >= 0.9,
        "parameter_ratio": max(r["parameter_ratio"] for r in runs) if runs else None,
    }


def has_no_holes(harvest_info: dict | None) -> bool:
    """Whether a recorded harvest holds one row for every prompt it was asked for."""
    return bool(harvest_info) and harvest_info.get("rows") == harvest_info.get("prompts_per_task", 0) * len(TASK_NAMES)


def run_cross(args: argparse.Namespace, size: dict, work: Path, teacher_dir: Path, teacher: dict,
              previous: dict) -> dict:
    """Part `cross`: one gateway harvest, then every requested student row."""
    store = work / "harvest.db"
    harvest_info = previous.get("harvest")
    if not (store.is_file() and has_no_holes(harvest_info)
            and harvest_info.get("prompts_per_task") == size["harvest_prompts"]):
        print("harvesting through a loopback gateway (resumes a stopped harvest) ...", flush=True)
        harvest_info = gateway_harvest(teacher_dir, work, store, size["harvest_prompts"], size["top_k"])
    sizes = sorted({n for _, n in args.row_specs})
    subsets = {n: subset_store(store, work / f"harvest-{n}.db", n) for n in sizes}
    jobs = [{"method": m, "prompts": n, "seed": s, "size": size, "smoke": args.smoke, "store": str(subsets[n]),
             "out": str(work / f"{row_name(m, n)}-seed{s}")} for m, n in args.row_specs for s in args.seeds]
    done = {(j["method"], j["prompts"], j["seed"]) for j in jobs}
    # Earlier students count only if they learnt from the same teacher's harvest: this one, or the part of it
    # an earlier run had harvested before it was resumed with more prompts (the seeded prompt streams and the
    # stored rows are the same, so every subset up to that size is too).
    before = previous.get("harvest") or {}
    same_harvest = (all(before.get(k) == harvest_info.get(k) for k in ("endpoint", "top_logprobs"))
                    and has_no_holes(before))
    same_setup = previous.get("teacher_commit") == teacher.get("commit") and same_harvest
    kept = [r for r in previous.get("runs", []) if same_setup
            and r["prompts_per_task"] <= before.get("prompts_per_task", 0)
            and (r["method"], r["prompts_per_task"], r["seed"]) not in done]
    runs: list[dict] = []

    def section() -> dict:
        every = kept + runs
        rows = by_row(every)
        for name, row in rows.items():  # the alignment's bookkeeping, from one seed (the harvest is the same)
            first = next(r for r in every if row_name(r["method"], r["prompts_per_task"]) == name)
            row["aligned"] = first.get("aligned")
            row["preset"] = first.get("preset")
        return {"harvest": harvest_info, "teacher": teacher, "teacher_commit": teacher.get("commit"),
                "seeds": sorted({r["seed"] for r in every}), "rows": rows,
                "runs": sorted(every, key=lambda r: (r["method"], r["prompts_per_task"], r["seed"])),
                "targets": cross_targets(rows, every) if every else {}}

    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_job, j) for j in jobs]
        for future in as_completed(futures):
            run = summarise(future.result(), teacher)
            runs.append(run)
            print(f"{row_name(run['method'], run['prompts_per_task']):<12} seed {run['seed']}  tokens "
                  f"{run['teacher_tokens']:>9,}  " + " ".join(f"{t} {run['accuracy'][t]:.1%}" for t in TASK_NAMES),
                  flush=True)
            args.write("cross", section())  # after every student: a stopped run keeps what it finished
    return section()


PARTS = {"cross": run_cross,  # part name -> runner(args, size, work, teacher_dir, teacher, previous section)
         "beyond": run_beyond}  # bench/distill_real_beyond.py


def parse_rows(spec: list[str] | None, harvest_prompts: int) -> list[tuple[str, int]]:
    """(method, prompts per task) of each requested row of part cross, named `method@prompts` (any method, any
    subset of the harvest). By default every method on the whole harvest and on a quarter of it (for "a quarter
    of the teacher tokens")."""
    n = harvest_prompts
    if not spec:
        return [(m, size) for size in (n, n // 4) for m in METHODS]
    rows = []
    for name in spec:
        method, _, prompts = name.partition("@")
        if method not in METHODS or not prompts.isdigit() or not 0 < int(prompts) <= n:
            raise SystemExit(f"unknown row {name}: use METHOD@PROMPTS with a method of {', '.join(METHODS)} "
                             f"and at most the {n} prompts per task harvested")
        rows.append((method, int(prompts)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a minute not an hour")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), help="parts to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds")
    parser.add_argument("--rows", nargs="+", default=None, help="rows of part cross (default: all of them)")
    parser.add_argument("--jobs", type=int, default=1, help="students trained at once, one torch thread each")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher directory (default: the shipped one)")
    parser.add_argument("--steps", type=int, default=None, help="part cross: override the student step budget")
    parser.add_argument("--harvest-prompts", type=int, default=None,
                        help="part cross: prompts per task to harvest (rows then name their subset, e.g. xkd@1000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = dict(SIZES["smoke" if args.smoke else "full"])
    if args.steps:
        size["steps"] = args.steps
    if args.harvest_prompts:
        size["harvest_prompts"] = args.harvest_prompts
    args.row_specs = parse_rows(args.rows, size["harvest_prompts"])
    out = OUT / ("distill_real-smoke.json" if args.smoke else "distill_real.json")
    result = json.loads(out.read_text()) if out.is_file() else {}
    # Rows kept from earlier invocations stay in the file, so each invocation's command and commit are kept too.
    this_run = {**{k: v for k, v in run_info(args.seeds[0]).items() if k != "machine"}, "parts": args.parts,
                "rows": [row_name(m, n) for m, n in args.row_specs] if "cross" in args.parts else []}
    history = result.get("invocations") or ([{"command": result["command"], "git_commit": result.get("git_commit")}]
                                            if result.get("command") else [])
    result["invocations"] = [*history, this_run]

    def write(part: str, section: dict) -> None:
        if out.is_file():  # another part may be running beside this one: keep the sections it wrote meanwhile
            on_disk = json.loads(out.read_text()).get("parts", {})
            result.setdefault("parts", {}).update({k: v for k, v in on_disk.items() if k != part})
        result.update({"benchmark": "distill_real", **run_info(args.seeds[0]), "smoke": args.smoke,
                       "sizes": size, "targets_wanted": TARGETS})
        result.setdefault("parts", {})[part] = section
        out.write_text(json.dumps(result, indent=2) + "\n")

    args.write = write
    work = ROOT / "runs" / ("bench-distill-real-smoke" if args.smoke else "bench-distill-real")
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = ensure_teacher(args.teacher, args.smoke, 0)
    teacher_model, teacher_tok = load_model(teacher_dir)
    report = evaluate(LocalTeacher(teacher_model, teacher_tok), get_tasks(list(TASK_NAMES)), n=size["eval_n"],
                      latency_samples=0, throughput_batch=0)
    teacher = {"dir": _shown(teacher_dir), "commit": read_card(teacher_dir).get("git_commit"),
               "accuracy": {k: v["accuracy"] for k, v in report["tasks"].items()},
               "parameters": count_parameters(teacher_model)}
    print(f"teacher: {teacher['accuracy']}", flush=True)
    for part in args.parts:
        section = PARTS[part](args, size, work, teacher_dir, teacher, result.get("parts", {}).get(part, {}))
        write(part, section)
        print_beyond(section) if part == "beyond" else print_part(part, section, teacher)
    print(f"wrote {out.relative_to(ROOT)}")


def print_part(part: str, section: dict, teacher: dict) -> None:
    """The part's table: each row's median / worst accuracy per task and its teacher tokens."""
    print(f"\n[{part}]\n{'row':<12}{'seeds':>6}{'teacher tok':>12}" + "".join(f"{t:>15}" for t in TASK_NAMES)
          + f"{'min ret (median / worst)':>26}")
    print(f"{'teacher':<12}{'':>6}{'':>12}" + "".join(f"{teacher['accuracy'][t]:>15.1%}" for t in TASK_NAMES))
    for name, r in section.get("rows", {}).items():
        print(f"{name:<12}{len(r['seeds']):>6}{r['teacher_tokens']:>12,}"
              + "".join(f"{r['median_accuracy'][t]:>8.1%}/{r['worst_accuracy'][t]:>6.1%}" for t in TASK_NAMES)
              + f"{r['median_min_reasoning_retention']:>17.1%} / {r['worst_min_reasoning_retention']:.1%}")
    print(f"targets: {json.dumps(section.get('targets', {}), indent=1)}")


if __name__ == "__main__":
    main()
