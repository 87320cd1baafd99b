"""Forensics benchmark: watermark detection and cost, radioactivity vs contamination, antidistillation sampling.

    python bench/forensics.py            # full size (about 70 min on one core of 2 with the shipped teacher)
    python bench/forensics.py --smoke    # tiny sizes, a minute or two

Uses the shipped default teacher, else the tests' tiny teacher (trained here when missing). Prints one
table per part and writes bench/results/forensics.json (or forensics-smoke.json) with the command, commit, seed,
machine and every size. Runs with one torch thread: on a shared 2-core machine that is several times faster
than two oversubscribed threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stillwatch.data import causal_lm_loss, encode_pairs  # noqa: E402
from stillwatch.evaluate import evaluate  # noqa: E402
from stillwatch.redact import command_line  # noqa: E402
from stillwatch.runinfo import git_commit  # noqa: E402
from stillwatch.forensics.antidistill import AntidistillProcessor, holdout_gradient  # noqa: E402
from stillwatch.forensics.prove import Evidence, ProveSettings, prove  # noqa: E402
from stillwatch.forensics.radioactivity import EvidenceText  # noqa: E402
from stillwatch.forensics.watermark import WatermarkConfig, detect, watermark_processor, z_score  # noqa: E402
from stillwatch.models import BUILTIN_TEACHER_DIR, build_model, load_model, save_model  # noqa: E402
from stillwatch.tasks import REASONING_TASKS, examples, get_task  # noqa: E402
from stillwatch.teachers.completion import SamplingParams  # noqa: E402
from stillwatch.teachers.local import LocalTeacher  # noqa: E402
from stillwatch.train import TrainConfig, train  # noqa: E402

KEY = "bench-forensics-secret"


@dataclass
class Sizes:
    """Every size the benchmark uses (recorded in the results)."""

    detect_texts: int = 400
    fpr_texts: int = 1000
    eval_n: int = 200
    deltas: tuple[float, ...] = (1.0, 2.0, 3.0)
    radio_total: int = 3000
    fractions: tuple[float, ...] = (0.01, 0.05, 0.10, 1.0)
    student_steps: int = 1500
    # The suspect: the teacher's architecture, a distiller who wants the teacher's behaviour, not a 1/10 copy.
    # The 1/10 `student` preset barely fits the story's word choices, so it inherits little of the tilt.
    radio_preset: str = "default"
    closed_prompts: int = 300
    closed_samples: int = 4
    # Per-window votes: each window's two most chosen tokens (open: among the suspect's top-1 predictions; closed:
    # among many samples at a lower temperature, which concentrate on what the suspect prefers).
    votes_top: int = 2
    closed_votes_samples: int = 256
    closed_votes_temperature: float = 0.5
    # closed mode when the API returns log-probabilities: vote with the suspect's most likely token (T = 1)
    closed_logprobs_samples: int = 64
    ad_train: int = 1500
    # With the competent proxy below, λ = 0.3 already breaks most served chain traces (an earlier run).
    ad_lambdas: tuple[float, ...] = (0.02, 0.05, 0.1)
    ad_temperatures: tuple[float, ...] = ()  # extra unmatched baselines; each λ gets a matched one anyway
    ad_calibration: int = 300
    ad_bisections: int = 7
    ad_eval_n: int = 100
    proxy_steps: int = 2000
    ad_student_steps: int = 4000
    # The chain task: the one a 1/10 student learns from 1,500 traces within this budget, so a loss can show.
    ad_tasks: tuple[str, ...] = ("chain",)


SMOKE = Sizes(detect_texts=60, fpr_texts=1000, eval_n=30, deltas=(2.0,), radio_total=300, fractions=(0.05, 1.0),
              student_steps=60, radio_preset="student", closed_prompts=40, closed_samples=2, closed_votes_samples=8,
              closed_logprobs_samples=4, ad_train=120, ad_lambdas=(3.0,), ad_calibration=20, ad_bisections=2,
              ad_eval_n=20, proxy_steps=40, ad_student_steps=60)


def teacher_dir() -> Path:
    """The shipped default teacher, or the tests' cached tiny teacher in a checkout without it."""
    if (BUILTIN_TEACHER_DIR / "stillwatch_card.json").is_file():
        return BUILTIN_TEACHER_DIR
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest  # the tests' cached tiny teacher

    return conftest.tiny_teacher.__wrapped__()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def train_student(tok, prompts: list[str], completions: list[str], seed: int, steps: int, preset: str = "student"):
    """SFT of a fresh student on (prompt, completion) pairs: the distiller's side."""
    model = build_model(preset, tok, seed=seed)

    def make_batch(step, rank, world):
        rng = random.Random(f"bench-student:{seed}:{step}")
        idx = [rng.randrange(len(prompts)) for _ in range(32)][rank::world]
        return encode_pairs(tok, [prompts[i] for i in idx], [completions[i] for i in idx])

    with tempfile.TemporaryDirectory() as run:
        train(model, make_batch, causal_lm_loss, TrainConfig(steps=steps, lr=3e-3, warmup=20, seed=seed,
                                                             checkpoint_every=10**6), run, progress=False)
    return model


# --- part 1: detection, false positives, accuracy cost ---------------------------------------------------------

def part_detection(teacher: LocalTeacher, sizes: Sizes, seed: int, wm: WatermarkConfig) -> dict:
    tok, story = teacher.tokenizer, get_task("story")
    vocab = len(tok)
    out: dict = {"deltas": {}}
    prompts = [e.prompt for e in examples(story, sizes.detect_texts, seed + 1)]
    plain_prompts = [e.prompt for e in examples(story, sizes.fpr_texts, seed + 2)]
    plain = teacher.generate(plain_prompts, SamplingParams(max_tokens=48, temperature=1.0, seed=seed + 3))
    base_eval = evaluate(teacher, [get_task(t) for t in (*REASONING_TASKS, "story")], n=sizes.eval_n,
                         latency_samples=0, throughput_batch=0)
    for delta in sizes.deltas:
        config = dataclasses.replace(wm, delta=delta)
        proc = watermark_processor(config, vocab)
        marked = teacher.generate(prompts, SamplingParams(max_tokens=48, temperature=1.0, seed=seed + 4),
                                  extra_processors=[proc])
        per_text = [detect(o[0].token_ids, config, ids(tok, p), vocab_size=vocab) for p, o in zip(prompts, marked)]
        # tokens needed: pool texts in random orders until the pooled z reaches 4
        needed = []
        for order in range(20):
            rng = random.Random(order)
            shuffled = rng.sample(per_text, len(per_text))
            n = g = 0
            for r in shuffled:
                n, g = n + r["num_tokens_scored"], g + r["num_green_tokens"]
                if z_score(g, n, config.gamma) >= 4:
                    needed.append(n)
                    break
        wm_teacher = LocalTeacher(teacher.model, tok, logits_processors=[proc])
        wm_eval = evaluate(wm_teacher, [get_task(t) for t in (*REASONING_TASKS, "story")], n=sizes.eval_n,
                           latency_samples=0, throughput_batch=0)
        out["deltas"][str(delta)] = {
            "mean_tokens_per_text": statistics.mean(r["num_tokens_scored"] for r in per_text),
            "mean_green_fraction": statistics.mean(r["green_fraction"] for r in per_text),
            "mean_z_per_text": statistics.mean(r["z_score"] for r in per_text),
            "texts_flagged_z4": sum(r["prediction"] for r in per_text) / len(per_text),
            "tokens_for_z4_median": statistics.median(needed) if needed else None,
            "accuracy": {t: wm_eval["tasks"][t]["accuracy"] for t in wm_eval["tasks"]},
            "accuracy_cost_points": {t: 100 * (base_eval["tasks"][t]["accuracy"] - wm_eval["tasks"][t]["accuracy"])
                                     for t in wm_eval["tasks"]},
        }
    config = wm
    fp = [detect(o[0].token_ids, config, ids(tok, p), vocab_size=vocab) for p, o in zip(plain_prompts, plain)]
    alphas = (0.1, 0.05, 0.01, 0.001)
    out["false_positives"] = {
        "texts": len(fp),
        "mean_tokens_scored": statistics.mean(r["num_tokens_scored"] for r in fp),
        "normal_p": {str(a): sum(r["p_value"] < a for r in fp) / len(fp) for a in alphas},
        "binomial_p": {str(a): sum(r["binomial_p_value"] < a for r in fp) / len(fp) for a in alphas},
        "z_ge_4": sum(r["z_score"] >= 4 for r in fp) / len(fp),
        "nominal_z_ge_4": 0.5 * math.erfc(4 / math.sqrt(2)),
        "mean_z": statistics.mean(r["z_score"] for r in fp),
    }
    # The same texts, each under its own random key: the calibration of the test itself. Under one fixed key,
    # texts share frequent (window, token) pairs whose colour is fixed by that key, so per-text errors correlate.
    own = [detect(o[0].token_ids, dataclasses.replace(wm, key=f"{KEY}:fp:{i}"), ids(tok, p), vocab_size=vocab)
           for i, (p, o) in enumerate(zip(plain_prompts, plain))]
    out["false_positives_key_per_text"] = {
        "texts": len(own),
        "normal_p": {str(a): sum(r["p_value"] < a for r in own) / len(own) for a in alphas},
        "binomial_p": {str(a): sum(r["binomial_p_value"] < a for r in own) / len(own) for a in alphas},
        "z_ge_4": sum(r["z_score"] >= 4 for r in own) / len(own),
        "mean_z": statistics.mean(r["z_score"] for r in own),
    }
    out["baseline_accuracy"] = {t: base_eval["tasks"][t]["accuracy"] for t in base_eval["tasks"]}
    return out


# --- part 2: radioactivity against the contaminated fraction -------------------------------------------------

RADIO_STATS = ("open", "open_votes", "closed", "closed_votes", "closed_logprobs")


def part_radioactivity(teacher: LocalTeacher, sizes: Sizes, seed: int, wm: WatermarkConfig) -> dict:
    tok, story = teacher.tokenizer, get_task("story")
    config = wm
    proc = watermark_processor(config, len(tok))
    other = [e for name in ("add", "mul", "chain", "story")
             for e in examples(get_task(name), sizes.radio_total // 4 + 1, seed + 20)]
    random.Random(seed).shuffle(other)
    rows = []
    for fraction in sizes.fractions:
        n_wm = max(1, round(fraction * sizes.radio_total))
        prompts = [e.prompt for e in examples(story, n_wm, seed + 30)]
        params = SamplingParams(max_tokens=48, temperature=1.0, seed=seed + 31)
        marked = [o[0] for o in teacher.generate(prompts, params, extra_processors=[proc])]
        plain = [o[0] for o in teacher.generate(prompts, params)]  # the control's data: same prompts, no watermark
        rest = other[: sizes.radio_total - n_wm]
        evidence = Evidence([EvidenceText(tuple(ids(tok, p)), tuple(c.token_ids), "story")
                             for p, c in zip(prompts, marked)], source=f"bench:{fraction}")
        row = {"fraction": fraction, "watermarked_texts": n_wm, "training_texts": sizes.radio_total}
        for name, served in (("suspect", marked), ("control", plain)):
            student = train_student(tok, prompts + [e.prompt for e in rest],
                                    [c.text for c in served] + [e.trace for e in rest], seed, sizes.student_steps,
                                    sizes.radio_preset)
            with tempfile.TemporaryDirectory() as d:
                path = save_model(student, tok, Path(d) / "m")
                reports = {"open": prove(evidence, config, tok, suspect_dir=path),
                           "open_votes": prove(evidence, config, tok, suspect_dir=path,
                                               settings=ProveSettings(per_window_top=sizes.votes_top))}
            suspect = LocalTeacher(student, tok)
            closed = ProveSettings(max_prompts=sizes.closed_prompts, samples_per_prompt=sizes.closed_samples,
                                   max_tokens=48, seed=seed)
            votes = dataclasses.replace(closed, samples_per_prompt=sizes.closed_votes_samples,
                                        temperature=sizes.closed_votes_temperature,
                                        per_window_top=sizes.votes_top)
            reports["closed"] = prove(evidence, config, tok, suspect_teacher=suspect, settings=closed)
            reports["closed_votes"] = prove(evidence, config, tok, suspect_teacher=suspect, settings=votes)
            logprobs = dataclasses.replace(closed, samples_per_prompt=sizes.closed_logprobs_samples,
                                           per_window_top=sizes.votes_top, closed_logprobs=True)
            reports["closed_logprobs"] = prove(evidence, config, tok, suspect_teacher=suspect, settings=logprobs)
            for mode, rep in reports.items():
                row[f"{name}_{mode}"] = {"p_value": rep["test"]["p_value"], "log10_p": rep["test"]["log10_p_value"],
                                         "tuples": rep["test"]["num_tuples_scored"],
                                         "green_fraction": rep["test"]["green_fraction"],
                                         "verdict": rep["verdict"]}
        rows.append(row)
    return {"rows": rows, "student_steps": sizes.student_steps, "student_preset": sizes.radio_preset,
            "statistics": {"open": "every distinct (window, top-1 prediction) tuple (Sander et al.)",
                           "open_votes": f"per window, the {sizes.votes_top} most predicted tokens",
                           "closed": f"every distinct generated tuple, {sizes.closed_samples} samples per "
                                     "distinct prompt at T = 1 (Sander et al.)",
                           "closed_votes": f"per window, the {sizes.votes_top} most generated tokens, "
                                           f"{sizes.closed_votes_samples} samples per distinct prompt at "
                                           f"T = {sizes.closed_votes_temperature}",
                           "closed_logprobs": f"per window, the {sizes.votes_top} tokens most often the suspect's "
                                              f"most likely one, from its log-probabilities over "
                                              f"{sizes.closed_logprobs_samples} samples per distinct prompt at T = 1"},
            "note": "closed mode samples the suspect through the Teacher protocol in process (same code path as "
                    "an OpenAI-compatible endpoint, without HTTP)"}


# --- part 3: antidistillation --------------------------------------------------------------------------------

def _served_accuracy(prompts: list[str], texts: list[str]) -> float:
    return sum(get_task(p.split(":", 1)[0]).score(p, t) for p, t in zip(prompts, texts)) / len(prompts)


def part_antidistill(teacher: LocalTeacher, sizes: Sizes, seed: int, proxy_dir: Path | None = None) -> dict:
    tok = teacher.tokenizer
    tasks = [get_task(t) for t in sizes.ad_tasks]
    prompts = [e.prompt for t in tasks for e in examples(t, sizes.ad_train // len(tasks), seed + 40)]
    random.Random(seed).shuffle(prompts)
    normal = [o[0].text for o in teacher.generate(prompts, SamplingParams(max_tokens=96, temperature=1.0,
                                                                          seed=seed + 41))]
    # the proxy student: a quick distillation of normal traces (the provider's guess of a distiller's model)
    if proxy_dir is not None:  # the proxy the gateway will use (STILLWATCH_ANTIDISTILL_PROXY): calibrate λ for it
        proxy = load_model(proxy_dir)[0]
    else:
        proxy = train_student(tok, prompts, normal, seed + 1, sizes.proxy_steps)
    held = [e for t in tasks for e in examples(t, 24, seed + 50)]
    held_traces = [o[0].text for o in teacher.generate([e.prompt for e in held],
                                                       SamplingParams(max_tokens=96, temperature=0.0))]
    gradient = holdout_gradient(proxy, tok, [e.prompt for e in held], held_traces)

    def served(temperature: float, lam: float, on: list[str]) -> list[str]:
        extra = [AntidistillProcessor(proxy, gradient, lam, 1e-2, tok.pad_token_id)] if lam else []
        params = SamplingParams(max_tokens=96, temperature=temperature, seed=seed + 42)
        return [o[0].text for o in teacher.generate(on, params, extra_processors=extra)]

    def condition(label: str, temperature: float, lam: float) -> dict:
        began = time.time()
        texts = normal if (lam == 0 and temperature == 1.0) else served(temperature, lam, prompts)
        student = train_student(tok, prompts, texts, seed, sizes.ad_student_steps)
        report = evaluate(LocalTeacher(student, tok), tasks, n=sizes.ad_eval_n, latency_samples=0,
                          throughput_batch=0)
        student_acc = statistics.mean(r["accuracy"] for r in report["tasks"].values())
        return {"label": label, "temperature": temperature, "lambda": lam,
                "teacher_accuracy": _served_accuracy(prompts, texts), "student_accuracy": student_acc,
                "student_per_task": {k: v["accuracy"] for k, v in report["tasks"].items()},
                "seconds": round(time.time() - began, 1)}

    def matched_temperature(target: float) -> float:
        """The temperature at which plain sampling is as accurate as `target` (bisection on a calibration set)."""
        calibration = prompts[:sizes.ad_calibration]
        low, high = 1.0, 4.0
        for _ in range(sizes.ad_bisections):
            middle = (low + high) / 2
            if _served_accuracy(calibration, served(middle, 0.0, calibration)) > target:
                low = middle
            else:
                high = middle
        return round((low + high) / 2, 3)

    rows = [condition("normal sampling", 1.0, 0.0)]
    for lam in sizes.ad_lambdas:
        poisoned = condition(f"antidistill λ={lam:g}", 1.0, lam)
        # the baseline the paper compares against: plain sampling degraded to the same teacher accuracy
        temperature = matched_temperature(poisoned["teacher_accuracy"])
        rows += [poisoned, {**condition(f"temperature {temperature:g} (matched to λ={lam:g})", temperature, 0.0),
                            "matched_to_lambda": lam}]
    rows += [condition(f"temperature {t:g}", t, 0.0) for t in sizes.ad_temperatures]
    return {"rows": rows, "train_traces": len(prompts),
            "proxy": str(proxy_dir) if proxy_dir else f"student preset, {sizes.proxy_steps} steps on normal traces",
            "epsilon": 1e-2, "student_steps": sizes.ad_student_steps, "calibration_prompts": sizes.ad_calibration}


def _table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(r, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the benchmark runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="detection,radioactivity,antidistill")
    parser.add_argument("--ad-tasks", help="antidistillation tasks, comma-separated (default: all reasoning)")
    parser.add_argument("--ad-lambdas", help="antidistillation λ values, comma-separated")
    parser.add_argument("--ad-temperatures", help="temperature-only baselines, comma-separated")
    parser.add_argument("--ad-proxy", type=Path, help="antidistillation proxy model directory (default: train one)")
    parser.add_argument("--ad-student-steps", type=int, help="steps of each distilled student")
    parser.add_argument("--context-width", type=int, default=WatermarkConfig.context_width,
                        help="watermark window (tokens) for detection and radioactivity")
    parser.add_argument("--radio-total", type=int, help="training texts of each radioactivity student")
    parser.add_argument("--student-steps", type=int, help="steps of each radioactivity student")
    parser.add_argument("--radio-preset", help="model preset of each radioactivity suspect and control")
    parser.add_argument("--fractions", help="watermarked fractions, comma-separated")
    parser.add_argument("--teacher", type=Path, help="teacher directory (default: the shipped teacher)")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/forensics.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = SMOKE if args.smoke else Sizes()
    overrides = {"ad_tasks": args.ad_tasks and tuple(args.ad_tasks.split(",")),
                 "ad_lambdas": args.ad_lambdas and tuple(float(x) for x in args.ad_lambdas.split(",")),
                 "ad_temperatures": args.ad_temperatures and tuple(float(x) for x in args.ad_temperatures.split(",")),
                 "ad_student_steps": args.ad_student_steps, "radio_total": args.radio_total,
                 "student_steps": args.student_steps, "radio_preset": args.radio_preset,
                 "fractions": args.fractions and tuple(float(x) for x in args.fractions.split(","))}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in overrides.items() if v})
    tdir = args.teacher or teacher_dir()
    wm = WatermarkConfig(key=KEY, context_width=args.context_width)
    teacher = LocalTeacher.from_dir(tdir)
    command = command_line(program=f"python {Path(__file__).resolve().relative_to(ROOT)}")
    results: dict = {"command": command, "commit": git_commit(), "seed": args.seed,
                     "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(),
                                 "torch": torch.__version__},
                     "teacher": str(tdir.relative_to(ROOT)) if tdir.is_relative_to(ROOT) else str(tdir),
                     "sizes": asdict(sizes), "watermark": wm.public_dict(), "seconds": {}}
    parts = args.parts.split(",")
    # partial runs merge into one file: each part keeps the command, commit and seed that produced it
    provenance = {"command": results["command"], "commit": results["commit"], "seed": args.seed,
                  "sizes": results["sizes"]}
    if "detection" in parts:
        began = time.time()
        d = results["detection"] = {**part_detection(teacher, sizes, args.seed, wm), **provenance}
        results["seconds"]["detection"] = round(time.time() - began, 1)
        _table("watermark on the story task and its accuracy cost (points, greedy eval)",
               ["delta", "tokens/text", "green %", "z/text", "texts z>=4", "tokens for z>=4",
                *[f"cost {t}" for t in (*REASONING_TASKS, "story")]],
               [[k, f"{v['mean_tokens_per_text']:.1f}", f"{v['mean_green_fraction']:.1%}",
                 f"{v['mean_z_per_text']:.2f}", f"{v['texts_flagged_z4']:.0%}", v["tokens_for_z4_median"],
                 *[f"{v['accuracy_cost_points'][t]:+.1f}" for t in (*REASONING_TASKS, "story")]]
                for k, v in d["deltas"].items()])
        fp = d["false_positives"]
        own = d["false_positives_key_per_text"]
        _table(f"false-positive rate on {fp['texts']} un-watermarked teacher stories (one key / a key per text)",
               ["alpha", "normal p, one key", "binomial p, one key", "normal p, key/text", "binomial p, key/text"],
               [[a, f"{fp['normal_p'][a]:.3f}", f"{fp['binomial_p'][a]:.3f}", f"{own['normal_p'][a]:.3f}",
                 f"{own['binomial_p'][a]:.3f}"] for a in fp["normal_p"]]
               + [["z>=4 (nominal 3.2e-5)", f"{fp['z_ge_4']:.4f}", "", f"{own['z_ge_4']:.4f}", ""]])
    if "radioactivity" in parts:
        began = time.time()
        r = results["radioactivity"] = {**part_radioactivity(teacher, sizes, args.seed, wm), **provenance}
        results["seconds"]["radioactivity"] = round(time.time() - began, 1)
        _table("radioactivity: log10 p of the suspect (trained on a watermarked fraction) / of its control",
               ["fraction", "wm texts", "open", "open votes", "closed", "closed votes", "closed logprobs",
                "tuples (each statistic)"],
               [[f"{x['fraction']:.0%}", x["watermarked_texts"],
                 *[f"{x[f'suspect_{m}']['log10_p']:.1f} / {x[f'control_{m}']['log10_p']:.2f}" for m in RADIO_STATS],
                 "/".join(str(x[f"suspect_{m}"]["tuples"]) for m in RADIO_STATS)] for x in r["rows"]])
    if "antidistill" in parts:
        began = time.time()
        a = results["antidistill"] = {**part_antidistill(teacher, sizes, args.seed, args.ad_proxy), **provenance}
        results["seconds"]["antidistill"] = round(time.time() - began, 1)
        _table("antidistillation: accuracy of the served traces and of a student distilled from them",
               ["condition", "teacher acc", "student acc"],
               [[x["label"], f"{x['teacher_accuracy']:.1%}", f"{x['student_accuracy']:.1%}"] for x in a["rows"]])
    out = args.out or ROOT / "bench" / "results" / ("forensics-smoke.json" if args.smoke else "forensics.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file() and set(parts) != {"detection", "radioactivity", "antidistill"}:
        # a partial run updates its own parts and keeps the others' results
        previous = json.loads(out.read_text())
        seconds = {**previous.get("seconds", {}), **results["seconds"]}
        results = {**previous, **results, "seconds": seconds}
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
