"""Train the elicitation model: one-vs-rest logistic regression (L-BFGS, L2) over hashed n-grams and rule hits.

    OMP_NUM_THREADS=1 nice -n 15 python -m stillwatch.detect.elicit_train --data data/elicit --seed 0

Reads train.jsonl (weights) and dev.jsonl (each category's bias offset and the threshold), writes
stillwatch/detect/elicit_model.npz. The test and indist splits are never read here. Training is convex, so a seed changes only the data (`--regenerate`).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import optimize, sparse

from stillwatch.detect.elicit import MODEL_PATH, ElicitClassifier, save_classifier
from stillwatch.detect.elicit_corpus import generate, read_split
from stillwatch.detect.elicit_features import FeatureConfig, featurise
from stillwatch.detect.elicit_rules import CATEGORIES, rule_hits
from stillwatch.detect.elicit_text import prompt_text


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; recorded in the model file."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    l2: float = 2e-6  # chosen on dev among 1e-4, 1e-5, 2e-6 and 5e-7 (see the README)
    max_iter: int = 300
    target_fpr: float = 0.01  # on the dev split's hard negatives; the threshold is set where this is met
    min_threshold: float = 0.5
    # shift each category's bias, on dev, to the offsets that give the most recall at target_fpr
    calibrate_categories: bool = True


def prepare(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """Each row's normalised text (with decoded views) and rule hit names: the model's input."""
    out = []
    for row in rows:
        joined = prompt_text(row["prompt"]).joined()
        out.append((joined, [r.name for r, _ in rule_hits(joined)]))
    return out


def design(prepared: list[tuple[str, list[str]]], cfg: FeatureConfig) -> sparse.csr_matrix:
    """The sparse feature matrix of prepared rows."""
    indptr, indices, data = [0], [], []
    for text, names in prepared:
        idx, val = featurise(text, names, cfg)
        indices.append(idx)
        data.append(val)
        indptr.append(indptr[-1] + len(idx))
    return sparse.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)),
                             shape=(len(prepared), cfg.dim), dtype=np.float32)


def targets(rows: list[dict]) -> np.ndarray:
    """(rows, categories) 0/1 matrix of labels."""
    return np.array([[c in row["labels"] for c in CATEGORIES] for row in rows], dtype=np.float64)


def fit(X: sparse.csr_matrix, Y: np.ndarray, l2: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Minimise mean log-loss + l2/2·‖W‖² for all categories at once; each category's positives are up-weighted
    to the size of its negatives, so rare categories are not drowned."""
    n, d = X.shape
    k = Y.shape[1]
    pos = Y.sum(0).clip(1)
    weight = np.where(Y > 0, (n - pos) / pos, 1.0)
    weight /= weight.mean(0)
    Xt = X.T.tocsr()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[: d * k].reshape(d, k), theta[d * k:]
        z = X @ W + b
        # log(1+e^z) - y·z, written stably
        value = (weight * (np.logaddexp(0, z) - Y * z)).sum() / n + 0.5 * l2 * (W * W).sum()
        g = weight * (1 / (1 + np.exp(-z)) - Y) / n
        grad_w = Xt @ g + l2 * W
        return value, np.concatenate([grad_w.ravel(), g.sum(0)])

    theta0 = np.zeros(d * k + k)
    res = optimize.minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return res.x[: d * k].reshape(d, k), res.x[d * k:]


def combined(X: sparse.csr_matrix, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The combined score of each row: the largest category probability."""
    return (1 / (1 + np.exp(-(X @ W + b)))).max(1)


def threshold_at_fpr(neg_scores: np.ndarray, fpr: float, floor: float) -> float:
    """The lowest threshold whose false-positive rate on these negatives is at most `fpr` (and ≥ floor)."""
    if len(neg_scores) == 0:
        return floor
    allowed = int(np.floor(fpr * len(neg_scores)))
    ranked = np.sort(neg_scores)[::-1]
    cut = ranked[allowed] if allowed < len(ranked) else 0.0
    return float(max(floor, np.nextafter(cut, 1.0)))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def recall_at_fpr(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray, fpr: float) -> float:
    """Recall above the score that lets at most `fpr` of the negatives through."""
    neg = np.sort(scores[negative])[::-1]
    allowed = int(np.floor(fpr * len(neg)))
    cut = neg[allowed] if allowed < len(neg) else -np.inf
    return float((scores[positive] > cut).mean()) if positive.any() else 0.0


def category_offsets(per_cat: np.ndarray, positive: np.ndarray, negative: np.ndarray, fpr: float,
                     grid: np.ndarray = np.arange(-3.0, 3.01, 0.25), rounds: int = 3) -> np.ndarray:
    """Logit offsets per category (coordinate ascent over `grid`) that maximise the recall of the combined score
    (the largest shifted probability) at `fpr` on `negative`; ties go to the smaller offset."""
    base = _logit(per_cat)
    offsets = np.zeros(per_cat.shape[1])

    def recall(candidate: np.ndarray) -> float:
        return recall_at_fpr((base + candidate).max(1), positive, negative, fpr)

    for _ in range(rounds):
        for c in range(len(offsets)):
            trial = offsets.copy()
            offsets[c] = max(grid, key=lambda v: (recall(np.where(np.arange(len(trial)) == c, v, trial)), -abs(v)))
    return offsets


def train(train_rows: list[dict], dev_rows: list[dict], config: TrainConfig = TrainConfig()) -> tuple[
        np.ndarray, np.ndarray, float, dict]:
    """Weights, bias, dev-chosen threshold and a summary of the run."""
    t0 = time.perf_counter()
    X = design(prepare(train_rows), config.features)
    W, b = fit(X, targets(train_rows), config.l2, config.max_iter)
    # the threshold comes from scoring dev exactly as the shipped classifier will (rounded weights, segments)
    clf = ElicitClassifier(weights=W.astype(np.float16).astype(np.float32), bias=b.astype(np.float32),
                           config=config.features, threshold=1.0, version="dev", meta={})
    dev_cat = np.array([[s[c] for c in CATEGORIES] for s in (clf.score(r["prompt"])["scores"] for r in dev_rows)])
    neg = np.array([not r["labels"] for r in dev_rows])
    hard = np.array([r["kind"] == "hard_negative" for r in dev_rows])
    offsets = np.zeros(len(CATEGORIES))
    if config.calibrate_categories:
        # a bias shift moves every segment's logit alike, so the shifted dev scores are exactly what it will score
        offsets = category_offsets(dev_cat, ~neg, hard, config.target_fpr)
        b = b + offsets
        dev_cat = 1 / (1 + np.exp(-(_logit(dev_cat) + offsets)))
    dev_scores = dev_cat.max(1)
    threshold = threshold_at_fpr(dev_scores[hard], config.target_fpr, config.min_threshold)
    summary = {"train_rows": len(train_rows), "dev_rows": len(dev_rows), "seconds": round(time.perf_counter() - t0, 2),
               "dev_recall": float((dev_scores[~neg] >= threshold).mean()) if (~neg).any() else None,
               "dev_fpr": float((dev_scores[neg] >= threshold).mean()) if neg.any() else None,
               "dev_recall_at_target_fpr_hard": recall_at_fpr(dev_scores, ~neg, hard, config.target_fpr),
               "category_offsets": [round(float(o), 3) for o in offsets]}
    return W, b, threshold, summary


def train_to_file(data_dir: Path, out: Path = MODEL_PATH, config: TrainConfig = TrainConfig(), seed: int = 0,
                  regenerate: bool = False) -> tuple[ElicitClassifier | Path, dict]:
    """Train on a data directory (or a freshly generated set for `seed`) and save the model file."""
    if regenerate:
        splits = generate(seed)
        train_rows, dev_rows = splits["train"], splits["dev"]
    else:
        train_rows, dev_rows = read_split(data_dir / "train.jsonl"), read_split(data_dir / "dev.jsonl")
    W, b, threshold, summary = train(train_rows, dev_rows, config)
    meta = {"trained": {**summary, "seed": seed, "l2": config.l2, "max_iter": config.max_iter,
                        "target_fpr": config.target_fpr, "calibrate_categories": config.calibrate_categories, "data": str(data_dir) if not regenerate else f"generated:{seed}"}}
    return save_classifier(out, W, b, config.features, threshold, meta), summary


def main() -> None:
    """Train and save the packaged model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/elicit"))
    parser.add_argument("--out", type=Path, default=MODEL_PATH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--regenerate", action="store_true", help="train on a set generated from --seed instead")
    parser.add_argument("--dim-bits", type=int, default=FeatureConfig.dim_bits)
    parser.add_argument("--l2", type=float, default=TrainConfig.l2)
    parser.add_argument("--calibrate-categories", action=argparse.BooleanOptionalAction,
                        default=TrainConfig.calibrate_categories, help="shift each category's bias on dev")
    args = parser.parse_args()
    config = TrainConfig(features=FeatureConfig(dim_bits=args.dim_bits), l2=args.l2,
                         calibrate_categories=args.calibrate_categories)
    path, summary = train_to_file(args.data, args.out, config, args.seed, args.regenerate)
    print(json.dumps({"model": str(path), **summary}))


if __name__ == "__main__":
    main()
