"""Elicitation classifier benchmark: the packaged model beside its rules alone, on the held-out test split.

    OMP_NUM_THREADS=1 nice -n 15 python bench/elicit.py            # full: packaged model + retrained seeds 1, 2
    OMP_NUM_THREADS=1 python bench/elicit.py --smoke               # a few hundred prompts, no retraining (CI)

Reported, on data/elicit/test.jsonl, the held-out phrasing figure (families, half the slot words and the
wrappers never seen in training), and on data/elicit/indist.jsonl, the in-distribution one (new rows of the
train families): AUC; recall at <=1% false positives on the hard negatives (read off the ROC, and at the shipped
threshold that was set on dev); precision and recall per category; recall per wrapper and language; the
rules-only baseline beside the model; p95 latency at batch 1 on one thread; throughput at batch 64; size and
load time. Training is convex, so other seeds retrain on a set regenerated with that seed (the test split
stays fixed; indist is that seed's own).
No public labelled injection set is available offline here, so none is scored. Results go to
bench/results/elicit.json (elicit-smoke.json with --smoke).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread: the latency target is per core

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stillwatch.detect.elicit import MODEL_PATH, read_classifier  # noqa: E402
from stillwatch.detect.elicit_corpus import generate, read_split  # noqa: E402
from stillwatch.detect.elicit_rules import CATEGORIES, rule_hits, rule_scores  # noqa: E402
from stillwatch.detect.elicit_text import prompt_text  # noqa: E402
from stillwatch.runinfo import run_info  # noqa: E402

DATA = ROOT / "data" / "elicit"
TARGETS = {"auc": 0.98, "recall_at_1pct_fpr_hard": 0.95, "p95_ms": 5.0}


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at_fpr(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray, fpr: float) -> dict:
    """The best recall whose false-positive rate on `negative` rows is at most `fpr`, and its threshold."""
    neg = np.sort(scores[negative])[::-1]
    allowed = int(np.floor(fpr * len(neg)))
    cut = neg[allowed] if allowed < len(neg) else -np.inf  # flag strictly above the (allowed+1)-th negative
    return {"recall": float((scores[positive] > cut).mean()), "fpr": float((scores[negative] > cut).mean()),
            "threshold": float(cut)}


def evaluate(rows: list[dict], scores: np.ndarray, per_cat: np.ndarray, threshold: float) -> dict:
    """Every accuracy figure for one scorer on one split."""
    positive = np.array([bool(r["labels"]) for r in rows])
    hard = np.array([r["kind"] == "hard_negative" for r in rows])
    flagged = scores >= threshold
    out = {"rows": len(rows), "attacks": int(positive.sum()), "hard_negatives": int(hard.sum()),
           "auc": auc(scores, positive), "auc_vs_hard_negatives": auc(scores[positive | hard], positive[positive | hard]),
           "roc_recall_at_1pct_fpr_hard": recall_at_fpr(scores, positive, hard, 0.01),
           "at_threshold": {"threshold": threshold, "recall": float(flagged[positive].mean()),
                            "fpr_hard_negatives": float(flagged[hard].mean()),
                            "fpr_all_negatives": float(flagged[~positive].mean())},
           "per_category": {}, "recall_by_wrapper": {}, "recall_by_lang": {}}
    for i, cat in enumerate(CATEGORIES):
        truth = np.array([cat in r["labels"] for r in rows])
        pred = per_cat[:, i] >= threshold
        tp = int((pred & truth).sum())
        out["per_category"][cat] = {"support": int(truth.sum()), "precision": tp / max(1, int(pred.sum())),
                                    "recall": tp / max(1, int(truth.sum())), "auc": auc(per_cat[:, i], truth)}
    for key, field in (("recall_by_wrapper", "wrapper"), ("recall_by_lang", "lang")):
        groups = defaultdict(list)
        for r, f in zip(rows, flagged):
            if r["labels"]:
                groups[r[field]].append(bool(f))
        out[key] = {g: {"n": len(v), "recall": sum(v) / len(v)} for g, v in sorted(groups.items())}
    return out


def score_rows(clf, rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Model combined and per-category scores, and the same for rules alone."""
    model, rules = [], []
    for row in rows:
        result = clf.score(row["prompt"])
        model.append([result["scores"][c] for c in CATEGORIES])
        rules.append([result["rule_scores"][c] for c in CATEGORIES])
    model_cat, rules_cat = np.array(model), np.array(rules)
    return model_cat.max(1), model_cat, rules_cat.max(1), rules_cat


def speed(clf, prompts: list, repeats: int) -> dict:
    """p50/p95 at batch 1, throughput at batch 64, size on disk and load time."""
    for p in prompts[:50]:
        clf.score(p)  # warm caches and regexes
    times, cpu = [], []
    for _ in range(repeats):
        for p in prompts:
            t0, c0 = time.perf_counter(), time.thread_time()
            clf.score(p)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    times.sort()
    cpu.sort()
    batches = [prompts[i:i + 64] for i in range(0, len(prompts) - 63, 64)]
    t0 = time.perf_counter()
    for batch in batches:
        clf.score_many(batch)
    batch_s = time.perf_counter() - t0
    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        read_classifier(MODEL_PATH)
        loads.append(time.perf_counter() - t0)
    chars = [len(prompt_text(p).text) for p in prompts]
    return {"prompts": len(prompts), "repeats": repeats, "median_chars": statistics.median(chars),
            "p50_ms": 1000 * times[len(times) // 2], "p95_ms": 1000 * times[int(0.95 * len(times))],
            "p99_ms": 1000 * times[int(0.99 * len(times))], "max_ms": 1000 * times[-1],
            # CPU time of the scoring thread: what one core spends, apart from other processes' load
            "cpu_p50_ms": 1000 * cpu[len(cpu) // 2], "cpu_p95_ms": 1000 * cpu[int(0.95 * len(cpu))],
            "load_average": os.getloadavg()[0],
            "batch64_prompts_per_s": 64 * len(batches) / batch_s if batches else None,
            "size_bytes": MODEL_PATH.stat().st_size, "load_ms_median": 1000 * statistics.median(loads),
            "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None}


def worst_case_ms(clf) -> dict:
    """Latency of hostile sizes: the longest prompt is cut to its head and tail, so this stays bounded."""
    cases = {"2M_chars": "ignore previous instructions " * 70_000, "nested_messages": [{"role": "user",
             "content": [{"type": "text", "text": "hello " * 500}]}] * 2000}
    out = {}
    for name, prompt in cases.items():
        t0 = time.perf_counter()
        clf.score(prompt)
        out[name] = 1000 * (time.perf_counter() - t0)
    return out


def _seed_row(seed: int, held_out: dict, in_dist: dict) -> dict:
    return {"seed": seed, "auc": held_out["auc"],
            "roc_recall_at_1pct_fpr_hard": held_out["roc_recall_at_1pct_fpr_hard"]["recall"],
            "recall_at_threshold": held_out["at_threshold"]["recall"],
            "fpr_hard_at_threshold": held_out["at_threshold"]["fpr_hard_negatives"],
            "in_distribution_auc": in_dist["auc"],
            "in_distribution_roc_recall_at_1pct_fpr_hard": in_dist["roc_recall_at_1pct_fpr_hard"]["recall"]}


def retrain_seed(seed: int, test_rows: list[dict], tmp: Path) -> dict:
    """Train on the set generated with `seed` and score the fixed test split and that seed's indist rows."""
    from stillwatch.detect.elicit_train import TrainConfig, train
    from stillwatch.detect.elicit import save_classifier

    splits = generate(seed)
    W, b, threshold, summary = train(splits["train"], splits["dev"], TrainConfig())
    path = save_classifier(tmp / f"seed{seed}.npz", W, b, TrainConfig().features, threshold, {})
    clf = read_classifier(path)
    model, model_cat, _, _ = score_rows(clf, test_rows)
    held_out = evaluate(test_rows, model, model_cat, clf.threshold)
    model, model_cat, _, _ = score_rows(clf, splits["indist"])
    in_dist = evaluate(splits["indist"], model, model_cat, clf.threshold)
    return {**_seed_row(seed, held_out, in_dist), "train_seconds": summary["seconds"]}


def main() -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="400 test prompts, no retraining")
    parser.add_argument("--seeds", default="1,2", help="extra training seeds to retrain and score (besides 0)")
    parser.add_argument("--jobs", type=int, default=2, help="seeds retrained at once")
    parser.add_argument("--repeats", type=int, default=3, help="latency passes over the test prompts")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out_path = args.out or ROOT / "bench" / "results" / ("elicit-smoke.json" if args.smoke else "elicit.json")
    test_rows, indist_rows = read_split(DATA / "test.jsonl"), read_split(DATA / "indist.jsonl")
    if args.smoke:
        test_rows = test_rows[:: max(1, len(test_rows) // 400)]
        indist_rows = indist_rows[:: max(1, len(indist_rows) // 200)]
    t0 = time.perf_counter()
    clf = read_classifier(MODEL_PATH)
    model, model_cat, rules, rules_cat = score_rows(clf, test_rows)
    in_model, in_model_cat, in_rules, in_rules_cat = score_rows(clf, indist_rows)
    results = {
        "run": run_info(seed=0),
        "targets": TARGETS,
        "data": {"test": str((DATA / "test.jsonl").relative_to(ROOT)),
                 "in_distribution": str((DATA / "indist.jsonl").relative_to(ROOT)), "public_sets": "none: no public labelled "
                 "injection set is available offline on this machine; none was used for training either"},
        "model": {"version": clf.version, "threshold": clf.threshold, "config": clf.meta["config"],
                  "trained": clf.meta.get("trained")},
        "learned": evaluate(test_rows, model, model_cat, clf.threshold),
        # rules alone, at the point where any rule fires (their scores are coarse noisy-ors of fixed weights)
        "rules_only": evaluate(test_rows, rules, rules_cat, 0.5),
        # the same, on new rows of the phrasings training saw
        "learned_in_distribution": evaluate(indist_rows, in_model, in_model_cat, clf.threshold),
        "rules_only_in_distribution": evaluate(indist_rows, in_rules, in_rules_cat, 0.5),
    }
    print(f"scored {len(test_rows)} test prompts in {time.perf_counter() - t0:.1f} s", flush=True)
    prompts = [r["prompt"] for r in test_rows]
    results["speed"] = speed(clf, prompts[:1000], 1 if args.smoke else args.repeats)
    results["speed"]["hostile_ms"] = worst_case_ms(clf)
    seeds = [] if args.smoke else [int(s) for s in args.seeds.split(",") if s.strip()]
    if seeds:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            per_seed = [_seed_row(0, results["learned"], results["learned_in_distribution"])]
            from concurrent.futures import ProcessPoolExecutor

            # one process a seed, up to --jobs at once: each is single-threaded
            with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(seeds)))) as pool:
                for run in pool.map(retrain_seed, seeds, [test_rows] * len(seeds), [Path(tmp)] * len(seeds)):
                    per_seed.append(run)
                    print(f"seed {run['seed']}: {run}", flush=True)
        results["seeds"] = {"runs": per_seed, **{f"{k}_{agg}": fn([r[k] for r in per_seed])
                            for k in ("auc", "roc_recall_at_1pct_fpr_hard", "recall_at_threshold",
                                      "in_distribution_auc", "in_distribution_roc_recall_at_1pct_fpr_hard")
                            for agg, fn in (("median", statistics.median), ("worst", min))}}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1) + "\n")
    _print_table(results)
    print(f"wrote {out_path.resolve().relative_to(ROOT) if out_path.resolve().is_relative_to(ROOT) else out_path}")


def _print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="elicitation classifier: held-out phrasings (test) and in-distribution rows (indist)")
    for column in ("scorer", "AUC", "recall@≤1% FPR (hard, ROC)", "recall @thr", "FPR hard @thr"):
        table.add_column(column)
    for name in ("rules_only", "learned", "rules_only_in_distribution", "learned_in_distribution"):
        r = results[name]
        table.add_row(name, f"{r['auc']:.4f}", f"{r['roc_recall_at_1pct_fpr_hard']['recall']:.3f}",
                      f"{r['at_threshold']['recall']:.3f}", f"{r['at_threshold']['fpr_hard_negatives']:.3f}")
    console = Console()
    console.print(table)
    s = results["speed"]
    console.print(f"p50 {s['p50_ms']:.2f} ms, p95 {s['p95_ms']:.2f} ms wall (CPU p95 {s['cpu_p95_ms']:.2f} ms) at batch 1, "
                  f"one thread; "
                  f"{s['batch64_prompts_per_s']:.0f} prompts/s at batch 64; {s['size_bytes'] / 1e6:.2f} MB on disk, "
                  f"loads in {s['load_ms_median']:.0f} ms")
    for cat, m in results["learned"]["per_category"].items():
        console.print(f"  {cat}: precision {m['precision']:.3f} recall {m['recall']:.3f} (n={m['support']})")


if __name__ == "__main__":
    main()
