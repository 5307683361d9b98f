"""Faithfulness of attributions, measured by erasing what they point at and re-scoring.

For word attributions of one example (``W`` words, score ``p = f(x)``; erasing = deleting
the words' pieces, see :mod:`pair_scorer`):

* **comprehensiveness** (ERASER, DeYoung et al., 2020): ``p - f(x without the top-k words)``,
  averaged over the bins k = 1, 5, 10, 20, 50 % of ``W`` (rounded up): ERASER's
  aggregate for soft scores. Higher is better.
* **sufficiency** (ERASER): ``p - f(only the top-k words)``, averaged the same way. Lower
  is better.
* **aopc** (Samek et al., 2017): the mean of ``p - f(x without the top-l words)`` for
  l = 1 .. min(10, W), removing one word at a time. Higher is better.
* **deletion_auc** / **insertion_auc** (Petsiuk et al., 2018): the area under the score
  curve as the top words are removed from x (lower is better) or added back to the pair
  with all words erased (higher is better), over the removed/inserted fraction 0..1 in
  steps of 10 %.

The same curves are computed over history items (remove the most-attributed past clicks
first). Each metric is reported for a seeded random attribution too, and every mean gets a
bootstrap 95 % interval over examples. On synthetic data, ``truth_precision@k`` and
``truth_recall@k`` compare the top-k distinct attributed words (or history items) with
the recorded true reasons; precision divides by ``min(k, #true reasons)`` so that a
perfect explainer scores 1 even when an example has fewer than k true reasons.
"""

from __future__ import annotations

import math

import numpy as np

from bert_recommender.explainability.history_attributions import Case, ComposeUserText, subset_scores
from bert_recommender.explainability.pair_scorer import PairScorer, Word

BINS = (0.01, 0.05, 0.10, 0.20, 0.50)
CURVE_FRACTIONS = np.linspace(0.0, 1.0, 11)
AOPC_STEPS = 10
HIGHER_IS_BETTER = {"comprehensiveness": True, "sufficiency": False, "aopc": True,
                    "deletion_auc": False, "insertion_auc": True}


def order_by(attributions) -> np.ndarray:
    """Indices from the largest attribution to the smallest (ties keep reading order)."""
    return np.argsort(-np.asarray(attributions, dtype=np.float64), kind="stable")


def bin_counts(num: int, bins=BINS) -> list:
    """How many of ``num`` units each bin's fraction selects (rounded up, at least 1)."""
    return [max(1, min(num, math.ceil(fraction * num - 1e-9))) for fraction in bins]


def _top_masks(order: np.ndarray, counts: list, num: int) -> np.ndarray:
    masks = np.zeros((len(counts), num), dtype=bool)
    for row, count in enumerate(counts):
        masks[row, order[:count]] = True
    return masks


def curve_auc(scores) -> float:
    """Trapezoid area under scores sampled at ``CURVE_FRACTIONS`` (or evenly on [0, 1])."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.trapezoid(scores, np.linspace(0.0, 1.0, len(scores))))


def _erasure_plan(order: np.ndarray, num: int, bins=BINS) -> dict:
    """Named groups of "top units to erase" masks, one row per variant to score."""
    counts = bin_counts(num, bins)
    # Round half up (Python's round() goes to even, which would make the steps uneven).
    curve_counts = [int(math.floor(f * num + 0.5)) for f in CURVE_FRACTIONS]
    top = lambda cs: _top_masks(order, cs, num)  # noqa: E731
    return {
        "comprehensiveness": top(counts),  # erase the top-k
        "sufficiency": ~top(counts),  # erase all but the top-k
        "aopc": top(list(range(1, min(AOPC_STEPS, num) + 1))),
        "deletion": top(curve_counts),
        "insertion": ~top(curve_counts),
    }


def _metrics_from_scores(score: float, scores: dict) -> dict:
    return {
        "comprehensiveness": float(np.mean(score - scores["comprehensiveness"])),
        "sufficiency": float(np.mean(score - scores["sufficiency"])),
        "aopc": float(np.mean(score - scores["aopc"])),
        "deletion_auc": curve_auc(scores["deletion"]),
        "insertion_auc": curve_auc(scores["insertion"]),
        "per_bin": {"comprehensiveness": [float(score - s) for s in scores["comprehensiveness"]],
                    "sufficiency": [float(score - s) for s in scores["sufficiency"]]},
    }


def _score_plan(plan: dict, score_masks) -> dict:
    names = list(plan)
    stacked = np.vstack([plan[n] for n in names])
    scores = score_masks(stacked)
    out, start = {}, 0
    for name in names:
        out[name] = scores[start:start + len(plan[name])]
        start += len(plan[name])
    return out


def token_faithfulness(scorer: PairScorer, token_ids: np.ndarray, segment_ids: np.ndarray,
                       words: list[Word], attributions, score: float, bins=BINS) -> dict:
    """The word-erasure metrics of the module docstring for one example, in one batch."""
    if not words:
        return {}
    plan = _erasure_plan(order_by(attributions), len(words), bins)
    scores = _score_plan(plan, lambda erased: scorer.scores(
        *scorer.erase(token_ids, segment_ids, words, erased)))
    return _metrics_from_scores(score, scores)


def history_faithfulness(scorer: PairScorer, case: Case, compose: ComposeUserText,
                         attributions, score: float) -> dict:
    """The same metrics over history items (bins become 1 item, curves step per 10 %)."""
    n = len(case.history)
    if n == 0:
        return {}
    plan = _erasure_plan(order_by(attributions), n, bins=(1.0 / n,))
    scores = _score_plan(plan, lambda erased: subset_scores(scorer, case, compose, ~erased))
    metrics = _metrics_from_scores(score, scores)
    metrics.pop("per_bin")
    return metrics


def truth_at_k(ranked: list, truth, k: int) -> dict:
    """Precision (divided by min(k, #truth)) and recall of the top-k distinct ``ranked``
    entries against the set ``truth``; empty when there is no truth."""
    truth = {str(t).lower() for t in truth}
    if not truth:
        return {}
    top = []
    for entry in ranked:
        entry = str(entry).lower()
        if entry not in top:
            top.append(entry)
        if len(top) == k:
            break
    hits = len(set(top) & truth)
    return {f"truth_precision@{k}": hits / min(k, len(truth)),
            f"truth_recall@{k}": hits / len(truth)}


def mean_ci(values, seed: int = 0, resamples: int = 1000, level: float = 0.95) -> tuple:
    """Mean and percentile-bootstrap interval of the mean over examples."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)],
                        dtype=np.float64)
    if len(values) == 0:
        return float("nan"), [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(values.mean()), [float(np.quantile(means, tail)),
                                  float(np.quantile(means, 1.0 - tail))]


def summarize(per_example: list[dict], seed: int = 0) -> dict:
    """``{metric: mean, metric + "_ci": [lo, hi]}`` over the examples' metric dicts
    (scalar metrics only)."""
    keys = sorted({k for row in per_example for k, v in row.items()
                   if isinstance(v, (int, float))})
    summary = {}
    for key in keys:
        values = [row.get(key) for row in per_example]
        mean, interval = mean_ci(values, seed=seed)
        summary[key] = mean
        summary[key + "_ci"] = interval
        counted = sum(v is not None for v in values)
        if counted < len(per_example):  # e.g. truth metrics: only examples with true reasons
            summary[key + "_examples"] = counted
    summary["examples"] = len(per_example)
    return summary


def beats(summary: dict, baseline: dict, metric: str) -> bool | None:
    """True when ``summary``'s 95 % interval for ``metric`` lies strictly on the better side
    of ``baseline``'s (non-overlapping); None when either is missing."""
    if metric + "_ci" not in summary or metric + "_ci" not in baseline:
        return None
    (lo, hi), (base_lo, base_hi) = summary[metric + "_ci"], baseline[metric + "_ci"]
    return bool(lo > base_hi) if HIGHER_IS_BETTER.get(metric, True) else bool(hi < base_lo)
