"""Offline evaluation metrics for click prediction and news ranking (pure numpy).

Everything here works on flat numpy arrays of per-impression-row predictions,
so the trainer can run one vectorized pass over a whole evaluation set after
`model.predict`. Nothing depends on TensorFlow or Keras.

Two families:

* Pointwise classification metrics on all rows: `auc`, `pr_auc`, `logloss`,
  `classification_report`, `expected_calibration_error`.
* Per-impression ranking metrics as defined by the MIND leaderboard scorer
  (microsoft/recommenders `evaluation.py`): `ranking_metrics` (group AUC, MRR,
  nDCG@k, HR@k averaged over impressions), plus `sampled_ranking_metrics` for the
  "one held-out positive among N sampled negatives" protocol.

`evaluate_predictions` bundles them into the flat, JSON-serialisable dict the
trainer writes to the run directory; `bootstrap_ci` gives a percentile
confidence interval for per-user values.

Example:

>>> import numpy as np
>>> labels = np.array([1, 0, 0, 1, 0])
>>> logits = np.array([2.0, -1.0, 0.5, -0.5, -2.0])
>>> groups = np.array([7, 7, 7, 9, 9])
>>> m = evaluate_predictions(labels, logits, groups)
>>> m["mrr"], m["group_auc"]
(1.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Larger bootstrap problems are resampled in chunks of about this many indices,
# so 1000 resamples of 100k values never materialise an 800 MB index matrix.
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


def _as_1d(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _check_same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"Inputs must have the same length, got {lengths}.")


def _within_group_positions(sorted_group_ids: np.ndarray, num_groups: int):
    """0-based position of each row inside its group, for rows sorted by group."""
    counts = np.bincount(sorted_group_ids, minlength=num_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    return np.arange(len(sorted_group_ids)) - starts[sorted_group_ids], counts


def _grouped_auc(
    labels: np.ndarray, scores: np.ndarray, group_ids: np.ndarray, num_groups: int
):
    """Per-group Mann-Whitney AUC with average ranks for tied scores.

    Returns (auc_per_group, num_pos, num_neg); auc is nan where a group lacks
    either class. Labels must be 0/1.
    """
    n = len(labels)
    num_pos = np.bincount(group_ids, weights=labels, minlength=num_groups)
    num_rows = np.bincount(group_ids, minlength=num_groups).astype(np.float64)
    num_neg = num_rows - num_pos
    if n == 0:
        return np.full(num_groups, np.nan), num_pos, num_neg

    # Ascending score within group; lexsort uses the last key as primary.
    order = np.lexsort((scores, group_ids))
    g = group_ids[order]
    s = scores[order]
    y = labels[order]
    positions, _ = _within_group_positions(g, num_groups)
    ranks = positions + 1.0

    # Tie blocks = maximal runs of equal (group, score); each row gets the mean
    # rank of its block, which is what gives tied pos/neg pairs 0.5 credit.
    new_block = np.empty(n, dtype=bool)
    new_block[0] = True
    new_block[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    block_starts = np.flatnonzero(new_block)
    block_sizes = np.diff(np.append(block_starts, n))
    block_mean_rank = np.add.reduceat(ranks, block_starts) / block_sizes
    avg_ranks = np.repeat(block_mean_rank, block_sizes)

    rank_sum_pos = np.bincount(g, weights=y * avg_ranks, minlength=num_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        aucs = (rank_sum_pos - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)
    aucs = np.where((num_pos > 0) & (num_neg > 0), aucs, np.nan)
    return aucs, num_pos, num_neg


def auc(labels, scores) -> float:
    """ROC AUC via the rank (Mann-Whitney U) formula.

    Tied scores get their average rank, so a positive/negative pair with equal
    scores contributes 0.5 (same as sklearn's `roc_auc_score`).

    Args:
        labels: 0/1 array of shape [n].
        scores: array of shape [n]; any monotone score (logits or probabilities).

    Returns:
        The AUC as a Python float, or `nan` if only one class is present.

    Example:
        >>> auc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.8])  # pairs: 1, 1, 0.5, 1
        0.875
    """
    y = _as_1d(labels)
    s = _as_1d(scores)
    _check_same_length(labels=y, scores=s)
    aucs, _, _ = _grouped_auc(y, s, np.zeros(len(y), dtype=np.int64), 1)
    return float(aucs[0])


def pr_auc(labels, scores) -> float:
    """Average precision, the step-wise area under the precision-recall curve.

    Same definition as sklearn's `average_precision_score`:
    `AP = sum_n (R_n - R_{n-1}) * P_n` over the distinct score thresholds in
    decreasing order (tied scores enter the curve together; no interpolation).

    Args:
        labels: 0/1 array of shape [n].
        scores: array of shape [n].

    Returns:
        Average precision as a Python float; `nan` when there is no positive
        (sklearn warns and returns 0 there; nan keeps "undefined" visible).
    """
    y = _as_1d(labels)
    s = _as_1d(scores)
    _check_same_length(labels=y, scores=s)
    total_pos = y.sum()
    if len(y) == 0 or total_pos <= 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # Last index of each run of equal scores = one threshold of the curve.
    threshold_idx = np.append(np.flatnonzero(np.diff(s_sorted) != 0), len(s) - 1)
    tps = np.cumsum(y_sorted)[threshold_idx]
    predicted_pos = threshold_idx + 1.0
    precision = tps / predicted_pos
    recall = tps / total_pos
    recall_steps = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(recall_steps * precision))


def logloss(labels, probabilities, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps].

    Args:
        labels: 0/1 (or soft) labels of shape [n].
        probabilities: predicted P(click) of shape [n].
        eps: clipping constant; keeps a confident mistake finite.

    Returns:
        The mean log loss in nats, as a Python float (`nan` for empty input).
    """
    y = _as_1d(labels)
    p = np.clip(_as_1d(probabilities), eps, 1.0 - eps)
    _check_same_length(labels=y, probabilities=p)
    if len(y) == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def classification_report(labels, probabilities, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall and F1 at a fixed decision threshold.

    A row is predicted positive when `probability > threshold` (strictly
    greater, as in `keras.metrics.BinaryAccuracy`/`Precision`/`Recall`).
    Precision, recall and F1 are 0.0 when their denominator is 0, without
    warnings.

    Args:
        labels: 0/1 array of shape [n].
        probabilities: predicted probabilities of shape [n].
        threshold: decision threshold.

    Returns:
        Dict with float values under "accuracy", "precision", "recall", "f1".
    """
    y = _as_1d(labels) > 0.5
    p = _as_1d(probabilities)
    _check_same_length(labels=y, probabilities=p)
    predicted = p > threshold
    tp = float(np.sum(predicted & y))
    fp = float(np.sum(predicted & ~y))
    fn = float(np.sum(~predicted & y))
    n = len(y)
    accuracy = float(np.mean(predicted == y)) if n else float("nan")
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "accuracy": accuracy,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def expected_calibration_error(labels, probabilities, num_bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins.

    `ECE = sum_b (n_b / n) * |mean(labels in b) - mean(probabilities in b)|`,
    with bins `[0, 1/B), [1/B, 2/B), ..., [(B-1)/B, 1]` (the last bin closed so
    probability 1.0 lands in it). Empty bins contribute nothing.

    Args:
        labels: 0/1 array of shape [n].
        probabilities: predicted probabilities in [0, 1] of shape [n].
        num_bins: number of equal-width bins.

    Returns:
        ECE as a Python float (`nan` for empty input).
    """
    y = _as_1d(labels)
    p = _as_1d(probabilities)
    _check_same_length(labels=y, probabilities=p)
    if len(y) == 0:
        return float("nan")
    bins = np.clip(np.floor(p * num_bins).astype(np.int64), 0, num_bins - 1)
    label_sums = np.bincount(bins, weights=y, minlength=num_bins)
    prob_sums = np.bincount(bins, weights=p, minlength=num_bins)
    # |mean(y) - mean(p)| * n_b / n == |sum(y) - sum(p)| / n per bin.
    return float(np.sum(np.abs(label_sums - prob_sums)) / len(y))


def ranking_metrics(labels, scores, groups, ks: Sequence[int] = (5, 10)) -> dict:
    """Per-impression ranking metrics as defined by the MIND leaderboard scorer.

    Rows are grouped by `groups` (one id per impression; rows of a group need
    not be contiguous). Within each group items are ranked by descending score;
    **ties are broken by original row order** (a stable sort on -score), so the
    row that comes first in the input is ranked higher. (MIND's scorer uses
    `np.argsort(score)[::-1]`, whose tie order is unspecified; with continuous
    model scores ties do not occur in practice.) Group AUC is unaffected by the
    tie rule: tied pos/neg pairs count 0.5 there, as in sklearn.

    Per group, with `rank` 1-based:

    * group AUC: ROC AUC of the group's rows (only groups with >=1 positive
      and >=1 negative).
    * MRR (MIND `mrr_score`): `sum(y / rank) / sum(y)`.
    * nDCG@k (MIND `ndcg_score`): DCG@k / ideal DCG@k, where
      `DCG@k = sum_{rank <= k} (2^y - 1) / log2(rank + 1)`.
    * HR@k: 1 if any positive is in the top k.

    MRR, nDCG@k and HR@k are averaged over groups with >= 1 positive (MIND
    impressions always have one; a group without positives has no defined
    value). Note keras_rs's NDCG/MRR instead count a list with no positive as 0.

    Args:
        labels: relevance of shape [n]; 0/1 clicks (group AUC and HR require
            binary labels; nDCG/MRR accept graded relevance like MIND's code).
        scores: model scores of shape [n] (logits or probabilities).
        groups: impression id per row, shape [n]; any sortable hashable dtype.
        ks: cut-offs for nDCG@k and HR@k.

    Returns:
        Dict with "group_auc", "mrr", "ndcg@{k}", "hr@{k}" (floats, nan when no
        group qualifies), "groups" (groups with >=1 positive and >=1 negative)
        and "groups_with_positive" (ints).
    """
    y = _as_1d(labels)
    s = _as_1d(scores)
    g_raw = np.asarray(groups).reshape(-1)
    _check_same_length(labels=y, scores=s, groups=g_raw)

    if len(y) == 0:
        result = {"group_auc": float("nan"), "mrr": float("nan")}
        for k in ks:
            result[f"ndcg@{k}"] = float("nan")
            result[f"hr@{k}"] = float("nan")
        result["groups"] = 0
        result["groups_with_positive"] = 0
        return result

    _, gid = np.unique(g_raw, return_inverse=True)
    gid = gid.reshape(-1).astype(np.int64)
    num_groups = int(gid.max()) + 1

    aucs, num_pos, num_neg = _grouped_auc(y, s, gid, num_groups)
    both_classes = (num_pos > 0) & (num_neg > 0)
    has_pos = num_pos > 0

    # Predicted ranking: group asc, score desc, ties by row order (lexsort is
    # stable, so equal (group, -score) keys keep input order).
    order = np.lexsort((-s, gid))
    g_sorted = gid[order]
    y_sorted = y[order]
    positions, _ = _within_group_positions(g_sorted, num_groups)
    ranks = positions + 1.0
    gains = np.power(2.0, y_sorted) - 1.0
    discounts = np.log2(ranks + 1.0)

    # Ideal ranking: the same groups sorted by relevance desc.
    ideal_order = np.lexsort((-y, gid))
    ideal_g = gid[ideal_order]
    ideal_positions, _ = _within_group_positions(ideal_g, num_groups)
    ideal_ranks = ideal_positions + 1.0
    ideal_gains = np.power(2.0, y[ideal_order]) - 1.0
    ideal_discounts = np.log2(ideal_ranks + 1.0)

    def mean_over(values: np.ndarray, mask: np.ndarray) -> float:
        return float(np.mean(values[mask])) if mask.any() else float("nan")

    with np.errstate(divide="ignore", invalid="ignore"):
        rr_sum = np.bincount(g_sorted, weights=y_sorted / ranks, minlength=num_groups)
        mrr = rr_sum / num_pos

        result = {
            "group_auc": mean_over(aucs, both_classes),
            "mrr": mean_over(mrr, has_pos),
        }
        for k in ks:
            in_top = ranks <= k
            dcg = np.bincount(
                g_sorted, weights=np.where(in_top, gains / discounts, 0.0),
                minlength=num_groups,
            )
            ideal_dcg = np.bincount(
                ideal_g,
                weights=np.where(ideal_ranks <= k, ideal_gains / ideal_discounts, 0.0),
                minlength=num_groups,
            )
            hits = np.bincount(
                g_sorted, weights=np.where(in_top, y_sorted > 0, 0.0),
                minlength=num_groups,
            )
            result[f"ndcg@{k}"] = mean_over(dcg / ideal_dcg, has_pos)
            result[f"hr@{k}"] = mean_over((hits > 0).astype(np.float64), has_pos)

    result["groups"] = int(np.sum(both_classes))
    result["groups_with_positive"] = int(np.sum(has_pos))
    return result


def _stable_sigmoid(logits: np.ndarray) -> np.ndarray:
    # exp(-|x|) never overflows; pick the algebraically equal branch per sign.
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def evaluate_predictions(
    labels,
    logits,
    groups,
    true_probabilities=None,
    ks: Sequence[int] = (5, 10),
) -> dict:
    """All evaluation metrics for one set of predictions, as a flat JSON-ready dict.

    The trainer calls this once per evaluation with the model's raw logits.
    Rank-based metrics (AUC, PR-AUC, ranking metrics) use the logits directly,
    so rows whose sigmoid saturates to the same float still rank correctly;
    probability-based metrics use the sigmoid of the logits (computed stably).

    Args:
        labels: 0/1 clicks of shape [n].
        logits: raw model outputs of shape [n].
        groups: impression id per row of shape [n].
        true_probabilities: optional true click probabilities of shape [n]
            (synthetic data); adds the Bayes-optimal reference values.
        ks: cut-offs for nDCG@k and HR@k.

    Returns:
        Dict of plain Python floats/ints with keys "auc", "pr_auc", "logloss",
        "ece", "accuracy", "precision", "recall", "f1", the `ranking_metrics`
        keys, "examples", "positive_rate", and, given `true_probabilities`,
        "oracle_auc" and "oracle_logloss".
    """
    y = _as_1d(labels)
    z = _as_1d(logits)
    _check_same_length(labels=y, logits=z)
    probabilities = _stable_sigmoid(z)

    result: dict = {
        "auc": auc(y, z),
        "pr_auc": pr_auc(y, z),
        "logloss": logloss(y, probabilities),
        "ece": expected_calibration_error(y, probabilities),
    }
    result.update(classification_report(y, probabilities))
    result.update(ranking_metrics(y, z, groups, ks=ks))
    result["examples"] = int(len(y))
    result["positive_rate"] = float(np.mean(y)) if len(y) else float("nan")
    if true_probabilities is not None:
        q = _as_1d(true_probabilities)
        _check_same_length(labels=y, true_probabilities=q)
        result["oracle_auc"] = auc(y, q)
        result["oracle_logloss"] = logloss(y, q)
    return result


def sampled_ranking_metrics(
    scores, positive_index: int = 0, ks: Sequence[int] = (10,)
) -> dict:
    """Per-user metrics for "one held-out positive ranked among N sampled negatives".

    The positive's 1-based rank is `1 + #(negatives with score >= positive)`:
    **a negative tied with the positive is counted as ranked above it**
    (pessimistic), so a constant model gets the worst rank, not the best.

    Args:
        scores: array of shape [num_users, 1 + num_negatives].
        positive_index: column holding the positive item's score.
        ks: cut-offs for HR@k and nDCG@k.

    Returns:
        Dict of float64 arrays of shape [num_users] (not averaged, so callers
        can bootstrap): "hr@{k}" (rank <= k), "ndcg@{k}" (1 / log2(rank + 1)
        if rank <= k else 0), "mrr" (1 / rank) and "auc" (fraction of negatives
        scored below the positive, ties 0.5).

    Example:
        >>> m = sampled_ranking_metrics([[0.9, 0.1, 0.95]], ks=(1, 2))
        >>> float(m["hr@1"][0]), float(m["hr@2"][0]), float(m["auc"][0])
        (0.0, 1.0, 0.5)
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(
            "scores must have shape [num_users, 1 + num_negatives] with at least "
            f"one negative, got {s.shape}."
        )
    positive = s[:, positive_index][:, None]
    negatives = np.delete(s, positive_index, axis=1)
    num_negatives = negatives.shape[1]
    above_or_tied = np.sum(negatives >= positive, axis=1)
    below = np.sum(negatives < positive, axis=1)
    tied = np.sum(negatives == positive, axis=1)
    rank = 1.0 + above_or_tied

    result = _rank_metrics(rank, ks)
    result["auc"] = (below + 0.5 * tied) / num_negatives
    return result


def _rank_metrics(rank: np.ndarray, ks: Sequence[int]) -> dict:
    """Per-user HR@k, nDCG@k (one relevant item) and reciprocal rank from 1-based ranks."""
    result = {}
    for k in ks:
        hit = rank <= k
        result[f"hr@{k}"] = hit.astype(np.float64)
        result[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)
    result["mrr"] = 1.0 / rank
    return result


def bootstrap_ci(
    values, num_samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of `values`.

    Resamples `values` with replacement `num_samples` times and returns the
    `(1 - confidence) / 2` and `(1 + confidence) / 2` percentiles of the
    resampled means. Deterministic for a given seed.

    Args:
        values: 1-D array of per-unit values (e.g. per-user nDCG).
        num_samples: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed for `np.random.default_rng`.

    Returns:
        (low, high) as Python floats; (nan, nan) for empty input.

    Example:
        >>> low, high = bootstrap_ci([0.0, 1.0, 1.0, 0.0], seed=1)
        >>> 0.0 <= low <= 0.5 <= high <= 1.0
        True
    """
    v = _as_1d(values)
    n = len(v)
    if n == 0:
        return float("nan"), float("nan")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    means = np.empty(num_samples, dtype=np.float64)
    for start in range(0, num_samples, chunk):
        stop = min(start + chunk, num_samples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def full_ranking_metrics(
    scores, positive_index, exclude=None, ks: Sequence[int] = (10,)
) -> dict:
    """Per-user metrics for "one held-out positive ranked against the whole catalogue".

    Every column of ``scores`` is an item; for user ``u`` the candidates are the
    positive ``positive_index[u]`` and every item not excluded by ``exclude[u]``
    (e.g. everything the user already rated; the positive's own entry in
    ``exclude`` is ignored). As in :func:`sampled_ranking_metrics`, the rank is
    `1 + #(candidates with score >= positive)`: **ties count against the
    positive** (a constant scorer gets the worst rank).

    Args:
        scores: array of shape [num_users, num_items].
        positive_index: int array [num_users], the positive's column per user.
        exclude: optional bool array [num_users, num_items]; True = not a
            candidate. None: every other item is a candidate.
        ks: cut-offs for HR@k and nDCG@k.

    Returns:
        Dict of float64 arrays of shape [num_users]: "hr@{k}", "ndcg@{k}", "mrr"
        (as in :func:`sampled_ranking_metrics`) and "candidates" (items ranked
        against the positive, the positive not included).

    Example:
        >>> m = full_ranking_metrics([[0.9, 0.5, 0.7, 0.95]], [2],
        ...                          exclude=[[False, False, False, True]], ks=(1, 2))
        >>> float(m["hr@1"][0]), float(m["hr@2"][0]), float(m["mrr"][0])
        (0.0, 1.0, 0.5)
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must have shape [num_users, num_items], got {s.shape}.")
    users = np.arange(s.shape[0])
    positive = np.asarray(positive_index, dtype=np.int64).reshape(-1)
    if len(positive) != s.shape[0]:
        raise ValueError(f"positive_index has {len(positive)} entries for "
                         f"{s.shape[0]} users.")
    if len(positive) and (positive.min() < 0 or positive.max() >= s.shape[1]):
        raise ValueError(f"positive_index must lie in [0, {s.shape[1]}).")
    candidate = np.ones(s.shape, dtype=bool)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != s.shape:
            raise ValueError(f"exclude has shape {exclude.shape}, scores {s.shape}.")
        candidate = ~exclude
    candidate[users, positive] = False  # the positive is not its own competitor
    above_or_tied = np.sum(candidate & (s >= s[users, positive][:, None]), axis=1)
    rank = 1.0 + above_or_tied

    result = _rank_metrics(rank, ks)
    result["candidates"] = candidate.sum(axis=1).astype(np.float64)
    return result
