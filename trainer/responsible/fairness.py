"""Responsible-recommendation measures: popularity bias, group exposure against merit, the
log-odds skew of a group, and user-group gaps (``python -m trainer.task audit``).

Pure numpy on ranked lists, so every measure is checked exactly on hand-made inputs
(tests/trainer/responsible/test_fairness.py); ``trainer/responsible/audit_lib.py`` feeds them a run's rankings.

Conventions:

* A *ranking* is an int array ``[lists, length]`` of item indices (``IdVocabulary.items``,
  1..N) best first, padded with ``-1``: each user's top k from the catalogue, or each
  impression's candidates sorted by score.
* Item popularity is the number of clicked training rows per item index
  (``item_counts[i]``); the *short head* is the ``head_fraction`` most popular catalogue
  items (20% after Abdollahpouri et al., "Controlling popularity bias in learning to rank
  recommendation", RecSys 2017), the *long tail* the rest.
* Exposure at rank r (1-based) is ``1 / log2(1 + r)``, the attention model of DCG
  (Singh & Joachims, "Fairness of exposure in rankings", KDD 2018), 0 below the cut-off k.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from trainer.evaluation import metrics

PAD = -1


def position_weights(length: int, k: int | None = None) -> np.ndarray:
    """``1 / log2(1 + r)`` for ranks 1..length, 0 beyond rank ``k``."""
    weights = 1.0 / np.log2(np.arange(2, length + 2, dtype=np.float64))
    if k is not None:
        weights[k:] = 0.0
    return weights


def long_tail_mask(item_counts, head_fraction: float = 0.2) -> np.ndarray:
    """bool ``[N + 1]``: True for long-tail items, i.e. every catalogue item (indices 1..N)
    outside the ``ceil(head_fraction * N)`` most clicked (ties: the lower index is in the
    head). Entry 0 (no item) is False."""
    counts = np.asarray(item_counts, dtype=np.float64)
    if not 0.0 <= head_fraction < 1.0:
        raise ValueError(f"head_fraction must be in [0, 1), got {head_fraction}")
    num_items = len(counts) - 1
    head = math.ceil(head_fraction * num_items)
    order = np.lexsort((np.arange(1, num_items + 1), -counts[1:])) + 1
    mask = np.zeros(len(counts), dtype=bool)
    mask[order[head:]] = True
    return mask


def gini(values) -> float:
    """The Gini coefficient of non-negative ``values`` (0: all equal; (n-1)/n: one value
    holds everything); 0 for an all-zero input."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total <= 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * total) - (n + 1) / n)


def _valid(ranking: np.ndarray) -> np.ndarray:
    return ranking != PAD


def _row_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    counts = valid.sum(axis=1)
    return np.where(counts > 0, np.where(valid, values, 0.0).sum(axis=1) / np.maximum(counts, 1),
                    np.nan)


def popularity_per_list(ranking, item_counts, tail) -> dict:
    """Per list: ``arp`` (mean training clicks of its items, Abdollahpouri et al. 2019's
    average recommendation popularity) and ``aplt`` (share of its items in the long
    tail)."""
    ranking = np.asarray(ranking, dtype=np.int64)
    valid = _valid(ranking)
    safe = np.where(valid, ranking, 0)
    counts = np.asarray(item_counts, dtype=np.float64)
    return {"arp": _row_mean(counts[safe], valid),
            "aplt": _row_mean(np.asarray(tail, dtype=np.float64)[safe], valid)}


def profile_popularity(histories: Sequence, item_counts) -> np.ndarray:
    """Per user: the mean training clicks of the items in their history (NaN if empty)."""
    counts = np.asarray(item_counts, dtype=np.float64)
    return np.array([counts[list(h)].mean() if len(h) else np.nan for h in histories],
                    dtype=np.float64)


def exposure_counts(ranking, num_items: int) -> np.ndarray:
    """float ``[num_items + 1]``: how often each item index appears in ``ranking``."""
    ranking = np.asarray(ranking, dtype=np.int64)
    return np.bincount(ranking[_valid(ranking)], minlength=num_items + 1).astype(np.float64)


def popularity_bias(ranking, item_counts, tail, profile=None) -> dict:
    """Corpus measures of a set of top-k lists over a catalogue of ``len(item_counts) - 1``
    items: ``arp``, ``aplt`` (means over lists), ``coverage`` (share of catalogue items
    recommended at least once), ``gini`` (of how often each catalogue item is
    recommended, never-recommended items included) and, with each list's user ``profile``
    popularity, ``popularity_lift`` = (mean ARP - mean profile popularity) / mean profile
    popularity over the users with a profile (Abdollahpouri et al., "The unfairness of
    popularity bias in recommendation", 2019: the recommendations' popularity against what
    the users themselves consume; > 0: the model pushes more popular items)."""
    per_list = popularity_per_list(ranking, item_counts, tail)
    num_items = len(item_counts) - 1
    exposure = exposure_counts(ranking, num_items)[1:]
    result = {"arp": float(np.nanmean(per_list["arp"])),
              "aplt": float(np.nanmean(per_list["aplt"])),
              "coverage": float((exposure > 0).sum() / max(num_items, 1)),
              "gini": gini(exposure)}
    if profile is not None:
        profile = np.asarray(profile, dtype=np.float64)
        usable = ~np.isnan(profile) & ~np.isnan(per_list["arp"]) & (profile > 0)
        if usable.any():
            base = profile[usable].mean()
            result["popularity_lift"] = float((per_list["arp"][usable].mean() - base) / base)
    return result


def group_exposure(ranking, merit, item_group, num_groups: int, k: int | None = None) -> dict:
    """Position-discounted exposure of each item group against its merit.

    Args:
      ranking: int ``[lists, length]`` item indices best first, ``-1`` padded.
      merit: float ``[lists, length]``, aligned with ``ranking``: each listed item's
        expected clicks (its true or predicted click probability for that user).
      item_group: int ``[N + 1]``: each item index's group, ``-1`` for none.
      k: the cut-off (exposure 0 below it); None: the whole list.

    Returns:
      ``exposure`` and ``merit`` (per group, summed over lists), their ``*_share``,
      ``disparity`` per group (exposure share / merit share - 1: 0 is exposure in proportion
      to merit, > 0 over-exposed; NaN for a group without merit) and ``total_variation``
      (half the L1 distance between the share vectors: 0 = fair, 1 = disjoint). Merit counts
      every listed item; exposure only the top k.
    """
    ranking = np.asarray(ranking, dtype=np.int64)
    merit = np.asarray(merit, dtype=np.float64)
    if merit.shape != ranking.shape:
        raise ValueError(f"merit has shape {merit.shape}, ranking {ranking.shape}")
    valid = _valid(ranking)
    groups = np.asarray(item_group, dtype=np.int64)[np.where(valid, ranking, 0)]
    counted = valid & (groups >= 0)
    weights = np.broadcast_to(position_weights(ranking.shape[1], k), ranking.shape)
    exposure = np.bincount(groups[counted], weights=weights[counted], minlength=num_groups)
    worth = np.bincount(groups[counted], weights=merit[counted], minlength=num_groups)
    return exposure_against_merit(exposure, worth)


def exposure_against_merit(exposure, merit) -> dict:
    """Per-group totals of exposure and merit -> their shares, each group's disparity
    (exposure share / merit share - 1) and the total variation between the shares (see
    :func:`group_exposure`)."""
    exposure = np.asarray(exposure, dtype=np.float64)
    merit = np.asarray(merit, dtype=np.float64)
    exposure_share = exposure / max(exposure.sum(), 1e-300)
    merit_share = merit / max(merit.sum(), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        disparity = np.where(merit_share > 0, exposure_share / merit_share - 1.0, np.nan)
    return {"exposure": exposure, "merit": merit, "exposure_share": exposure_share,
            "merit_share": merit_share, "disparity": disparity,
            "total_variation": float(0.5 * np.abs(exposure_share - merit_share).sum())}


def log_odds_shift(outcome, reference_probability, eps: float = 1e-6) -> float:
    """The shift b that makes ``sigmoid(logit(reference) + b)`` match ``outcome`` on
    average: the maximum-likelihood coefficient of a logistic regression of ``outcome``
    (clicks, or a model's click probabilities) on a group indicator with
    ``logit(reference)`` as offset. Run on one group's rows with the true relevance as
    reference, it measures how many log-odds the group's clicks (or a model's scores)
    sit above what relevance explains: 0 for no skew. Solved by bisection (the mean of
    ``sigmoid(o + b)`` increases in b); +-inf when every outcome is 1 (0)."""
    y = np.asarray(outcome, dtype=np.float64)
    p = np.clip(np.asarray(reference_probability, dtype=np.float64), eps, 1.0 - eps)
    if len(y) == 0:
        return float("nan")
    target = y.mean()
    if target <= 0.0:
        return float("-inf")
    if target >= 1.0:
        return float("inf")
    offset = np.log(p) - np.log1p(-p)
    low, high = -30.0, 30.0
    for _ in range(50):  # 60 / 2**50: far below any difference that matters
        mid = 0.5 * (low + high)
        if (1.0 / (1.0 + np.exp(-(offset + mid)))).mean() < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def bootstrap_samples(units: int, num_samples: int, seed: int = 0) -> list:
    """``num_samples`` resamples with replacement of ``range(units)`` (seeded)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, units, size=units) for _ in range(num_samples)]


def percentile_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` interval of ``values`` by percentiles, non-finite values
    dropped; ``(nan, nan)`` when none is left."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_interval(statistic: Callable[[np.ndarray], float], units: int,
                       num_samples: int = 200, confidence: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``units`` resampled
    with replacement (users, impressions...): for statistics that are not a mean of
    per-unit values (:func:`trainer.evaluation.metrics.bootstrap_ci` covers those). Resamples whose
    statistic is not finite are dropped."""
    if units == 0:
        return float("nan"), float("nan")
    return percentile_interval([statistic(sample) for sample in
                                bootstrap_samples(units, num_samples, seed)], confidence)


def impression_ndcg(labels, scores, groups, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(group ids, nDCG@k)`` of every impression with at least one click: DCG of the
    clicked candidates in score order (ties: lower row first) over the ideal DCG."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    g, y = groups[order], labels[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ids, values = [], []
    for start, stop in zip(starts, np.r_[starts[1:], len(g)]):
        gains = y[start:stop]
        if gains.sum() <= 0:
            continue
        weights = position_weights(len(gains), k)
        ideal = np.sort(gains)[::-1]
        ids.append(g[start])
        values.append(float((gains * weights).sum() / (ideal * weights).sum()))
    return np.array(ids), np.array(values, dtype=np.float64)


def activity_groups(activity, num_groups: int = 4) -> tuple[np.ndarray, list]:
    """Users split into ``num_groups`` activity quantiles (fewest training clicks first):
    ``(group index per user, labels like "q1: 0-3 clicks")``. Equal activities share a
    group, so there may be fewer groups than asked."""
    activity = np.asarray(activity, dtype=np.float64)
    edges = np.unique(np.quantile(activity, np.linspace(0, 1, num_groups + 1)[1:-1]))
    index = np.searchsorted(edges, activity, side="right")
    used = np.unique(index)
    relabel = {old: new for new, old in enumerate(used)}
    index = np.array([relabel[i] for i in index], dtype=np.int64)
    labels = []
    for new, old in enumerate(used):
        members = activity[index == new]
        labels.append(f"q{new + 1}: {int(members.min())}-{int(members.max())} clicks")
    return index, labels


def user_group_metrics(labels, probabilities, impressions, user_group, group_names: list,
                       ks: Sequence[int] = (10,), bootstrap: int = 200, seed: int = 0) -> dict:
    """AUC, nDCG@k and ECE of every user group, with bootstrap intervals over the group's
    impressions, and the gap (largest minus smallest group value) of each metric.

    AUC and ECE per group come from fairlearn's ``MetricFrame`` (row metrics by a
    sensitive feature); nDCG is a per-impression ranking metric, averaged per group here.

    Args:
      labels, probabilities: per row (a candidate shown in an impression).
      impressions: per row, the impression's id (an int).
      user_group: per row, the index into ``group_names`` of the row's user group.
    """
    from fairlearn.metrics import MetricFrame  # the [audit] dependency, imported on use

    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    impressions = np.asarray(impressions)
    user_group = np.asarray(user_group, dtype=np.int64)
    row_metrics = {"auc": _safe_auc, "ece": metrics.expected_calibration_error}
    frame = MetricFrame(metrics=row_metrics, y_true=labels, y_pred=probabilities,
                        sensitive_features=np.array(group_names, dtype=object)[user_group])
    by_group = frame.by_group
    result = {"groups": {}, "gaps": {}}
    for index, name in enumerate(group_names):
        rows = np.flatnonzero(user_group == index)
        entry = {"rows": int(len(rows)), "impressions": int(len(np.unique(impressions[rows])))}
        for metric in row_metrics:
            entry[metric] = float(by_group.loc[name, metric]) if name in by_group.index \
                else float("nan")
        ndcg = {}
        for k in ks:
            _, ndcg[k] = impression_ndcg(labels[rows], probabilities[rows], impressions[rows],
                                           k)
            entry[f"ndcg@{k}"] = float(ndcg[k].mean()) if len(ndcg[k]) else float("nan")
        entry["intervals"] = _group_intervals(labels[rows], probabilities[rows],
                                              impressions[rows], ndcg, row_metrics, bootstrap,
                                              seed)
        result["groups"][name] = entry
    for metric in [*row_metrics, *(f"ndcg@{k}" for k in ks)]:
        values = [g[metric] for g in result["groups"].values() if np.isfinite(g[metric])]
        result["gaps"][metric] = float(max(values) - min(values)) if values else float("nan")
    return result


def _safe_auc(labels, scores) -> float:
    labels = np.asarray(labels)
    if labels.min(initial=1) == labels.max(initial=0):
        return float("nan")  # one class only
    return metrics.auc(labels, scores)


def _group_intervals(labels, probabilities, impressions, ndcg: dict, row_metrics: dict,
                     bootstrap: int, seed: int) -> dict:
    """Bootstrap intervals of a group's metrics, resampling its impressions."""
    if not bootstrap or len(labels) == 0:
        return {}
    unique, rows_of = np.unique(impressions, return_inverse=True)
    members = [np.flatnonzero(rows_of == i) for i in range(len(unique))]
    intervals = {}
    for metric, fn in row_metrics.items():
        def statistic(sample, fn=fn):
            rows = np.concatenate([members[i] for i in sample])
            return fn(labels[rows], probabilities[rows])
        intervals[metric] = bootstrap_interval(statistic, len(unique), bootstrap, seed=seed)
    for k, values in ndcg.items():
        intervals[f"ndcg@{k}"] = metrics.bootstrap_ci(values, bootstrap, seed=seed) \
            if len(values) else (float("nan"), float("nan"))
    return intervals


def _standardize(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, (x - mean) / std over the valid entries (std 0 -> 1)."""
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean = np.where(valid, values, 0.0).sum(axis=1, keepdims=True) / count
    spread = np.sqrt(np.where(valid, (values - mean) ** 2, 0.0).sum(axis=1, keepdims=True)
                     / count)
    return (values - mean) / np.where(spread > 0, spread, 1.0)


def popularity_rerank(ranking, scores, item_counts, weight: float, k: int) -> np.ndarray:
    """The exposure-aware reranker: each list's top ``k`` by
    ``(1 - weight) * z(score) - weight * z(log(1 + training clicks))``, both standardised
    within the list, so one knob trades relevance for less popular (long-tail) items:
    ``weight`` 0 keeps the model's order, 1 orders by unpopularity alone. The score-based
    popularity penalty of Abdollahpouri et al.'s re-ranking family (a one-dimensional MMR:
    the novelty term is the item's own popularity).

    Args:
      ranking: int ``[lists, n]`` candidate item indices, ``-1`` padded (e.g. each user's top
        100 by the model).
      scores: float ``[lists, n]`` the model's scores of those candidates.
      item_counts: training clicks per item index.
    Returns:
      int ``[lists, k]``: the reranked top k (``-1`` padded).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the reranking weight must be in [0, 1], got {weight}")
    ranking = np.asarray(ranking, dtype=np.int64)
    valid = _valid(ranking)
    popularity = np.log1p(np.asarray(item_counts, dtype=np.float64)[np.where(valid, ranking, 0)])
    combined = ((1.0 - weight) * _standardize(np.asarray(scores, np.float64), valid)
                - weight * _standardize(popularity, valid))
    combined = np.where(valid, combined, -np.inf)
    # stable: ties keep the model's order
    order = np.argsort(-combined, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(np.where(valid, ranking, PAD), order, axis=1)


def list_ndcg(ranking, relevant: list, k: int) -> np.ndarray:
    """Per list, nDCG@k of binary relevance: ``relevant[i]`` is the set of list i's
    relevant item indices (held-out clicks), counted in the ideal DCG even when the list
    misses them."""
    ranking = np.asarray(ranking, dtype=np.int64)
    weights = position_weights(k)
    out = np.zeros(len(ranking), dtype=np.float64)
    for i, items in enumerate(relevant):
        if not len(items):
            out[i] = np.nan
            continue
        hits = np.isin(ranking[i, :k], list(items)) & (ranking[i, :k] != PAD)
        out[i] = (weights[:len(hits)] * hits).sum() / weights[:min(k, len(items))].sum()
    return out
