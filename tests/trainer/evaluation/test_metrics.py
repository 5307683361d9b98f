"""Tests for trainer.evaluation.metrics: hand-computed values, MIND and keras_rs cross-checks."""

import json
import math
import warnings

import numpy as np
import pytest

from trainer.evaluation import metrics

LOG2_3 = math.log2(3.0)
LOG2_5 = math.log2(5.0)


# --- Reference implementations (MIND scorer, microsoft/recommenders) ---------
# Copied from the official scorer, except argsort(...)[::-1] (unspecified tie
# order) is replaced by a stable sort on -score, matching trainer.evaluation.metrics.


def _mind_dcg_score(y_true, y_score, k=10):
    order = np.argsort(-y_score, kind="stable")
    y_true = np.take(y_true, order[:k])
    gains = 2**y_true - 1
    discounts = np.log2(np.arange(len(y_true)) + 2)
    return np.sum(gains / discounts)


def _mind_ndcg_score(y_true, y_score, k=10):
    best = _mind_dcg_score(y_true, y_true, k)
    actual = _mind_dcg_score(y_true, y_score, k)
    return actual / best


def _mind_mrr_score(y_true, y_score):
    order = np.argsort(-y_score, kind="stable")
    y_true = np.take(y_true, order)
    rr_score = y_true / (np.arange(len(y_true)) + 1)
    return np.sum(rr_score) / np.sum(y_true)


def _pairwise_auc(y_true, y_score):
    pos = y_score[y_true == 1]
    neg = y_score[y_true == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def _random_impressions(seed, num_groups=40, max_size=12, one_positive=False):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, max_size + 1, size=num_groups)
    groups = np.repeat(np.arange(num_groups), sizes)
    scores = rng.normal(size=len(groups))
    if one_positive:
        labels = np.zeros(len(groups))
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        labels[starts + rng.integers(0, sizes)] = 1.0
    else:
        labels = (rng.random(len(groups)) < 0.3).astype(np.float64)
    return labels, scores, groups, sizes


# --- auc ---------------------------------------------------------------------


def test_auc_with_ties_hand_computed():
    # Positives score 0.4, 0.8; negatives 0.1, 0.4. Pairs (pos, neg):
    # (0.4, 0.1)=1, (0.4, 0.4)=0.5 tie, (0.8, 0.1)=1, (0.8, 0.4)=1 -> 3.5 / 4.
    assert metrics.auc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.8]) == pytest.approx(0.875)


def test_auc_all_tied_is_half_and_perfect_is_one():
    assert metrics.auc([0, 1, 1, 0], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert metrics.auc([0, 0, 1], [0.1, 0.2, 0.9]) == pytest.approx(1.0)
    assert metrics.auc([1, 0], [0.1, 0.9]) == pytest.approx(0.0)


def test_auc_matches_pairwise_definition_on_random_ties():
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.4).astype(int)
    scores = rng.integers(0, 7, size=300).astype(float)  # many ties
    assert metrics.auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores))


def test_auc_single_class_is_nan():
    assert math.isnan(metrics.auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(metrics.auc([0, 0], [0.1, 0.5]))


# --- pr_auc ------------------------------------------------------------------


def test_pr_auc_hand_computed():
    # Sorted desc: 0.9(+) 0.8(-) 0.7(+) 0.1(-).
    # thresholds: P=1,R=.5 | P=.5,R=.5 | P=2/3,R=1 | P=.5,R=1
    # AP = .5*1 + 0*.5 + .5*(2/3) + 0*.5 = 5/6.
    assert metrics.pr_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)


def test_pr_auc_ties_enter_curve_together():
    # Threshold 0.9: P=1, R=.5; threshold 0.5 takes both tied rows: P=2/3, R=1.
    # AP = .5*1 + .5*(2/3) = 5/6 (independent of the tied rows' order).
    assert metrics.pr_auc([1, 0, 1], [0.9, 0.5, 0.5]) == pytest.approx(5 / 6)
    assert metrics.pr_auc([1, 1, 0], [0.9, 0.5, 0.5]) == pytest.approx(5 / 6)


def test_pr_auc_no_positive_is_nan():
    assert math.isnan(metrics.pr_auc([0, 0], [0.2, 0.3]))


# --- logloss -----------------------------------------------------------------


def test_logloss_two_rows():
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert metrics.logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected)


def test_logloss_clips_probabilities():
    # p=0 for a positive is clipped to eps: loss -ln(1e-7) (second row costs ~1e-7).
    expected = (-math.log(1e-7) - math.log(1 - 1e-7)) / 2
    assert metrics.logloss([1, 0], [0.0, 0.0]) == pytest.approx(expected)


# --- classification_report ---------------------------------------------------


def test_classification_report_hand_computed():
    # Predicted positive iff p > 0.5 -> [1, 1, 0, 0, 0] (0.5 itself is negative).
    # labels [1, 0, 1, 0, 1]: tp=1, fp=1, fn=2, tn=1.
    # accuracy 2/5, precision 1/2, recall 1/3, f1 = 2*(1/2)(1/3)/(5/6) = 0.4.
    report = metrics.classification_report([1, 0, 1, 0, 1], [0.9, 0.6, 0.4, 0.2, 0.5])
    assert report == pytest.approx(
        {"accuracy": 0.4, "precision": 0.5, "recall": 1 / 3, "f1": 0.4}
    )


def test_classification_report_undefined_is_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = metrics.classification_report([0, 1, 0], [0.1, 0.2, 0.3])
    # Nothing predicted positive: precision undefined -> 0, recall 0/1 = 0.
    assert report == {"accuracy": 2 / 3, "precision": 0.0, "recall": 0.0, "f1": 0.0}


# --- expected_calibration_error ----------------------------------------------


def test_ece_four_rows():
    # bins of width 0.1: 0.05 -> bin 0, 0.15 and 0.12 -> bin 1, 0.95 -> bin 9.
    # bin 0: |0 - 0.05| * 1/4 = 0.0125
    # bin 1: |0.5 - 0.135| * 2/4 = 0.1825
    # bin 9: |1 - 0.95| * 1/4 = 0.0125            total 0.2075
    ece = metrics.expected_calibration_error([0, 1, 0, 1], [0.05, 0.15, 0.12, 0.95])
    assert ece == pytest.approx(0.2075)


def test_ece_probability_one_goes_to_last_bin():
    # Perfectly calibrated extremes: p=1 with y=1 and p=0 with y=0 -> 0.
    assert metrics.expected_calibration_error([1, 0], [1.0, 0.0]) == pytest.approx(0.0)


# --- ranking_metrics ---------------------------------------------------------

# Four impressions, interleaved (non-contiguous) in the input:
#   a: labels [0, 1, 0, 1, 0], scores [.9, .8, .3, .2, .1] -> positives at ranks 2, 4
#   b: labels [1, 0, 0],       scores [.5, .7, .6]         -> positive at rank 3
#   c: labels [0, 0],          scores [.4, .2]             -> no positive: ignored
#   d: labels [1],             scores [.3]                 -> positive at rank 1, no negative
_GROUP_ROWS = {
    "a": ([0, 1, 0, 1, 0], [0.9, 0.8, 0.3, 0.2, 0.1]),
    "b": ([1, 0, 0], [0.5, 0.7, 0.6]),
    "c": ([0, 0], [0.4, 0.2]),
    "d": ([1], [0.3]),
}


def _hand_example(interleave: bool):
    rows = [
        (g, y, s) for g, (ys, ss) in _GROUP_ROWS.items() for y, s in zip(ys, ss)
    ]
    if interleave:
        # Deterministic interleaving; no within-group ties, so row order is irrelevant.
        order = sorted(range(len(rows)), key=lambda i: (i % 3, i))
        rows = [rows[i] for i in order]
    groups, labels, scores = zip(*rows)
    return np.array(labels), np.array(scores), np.array(groups)


# Hand computation:
# group AUC (groups with both classes: a, b):
#   a: pos .8 beats {.3, .1} of negs {.9, .3, .1} = 2, pos .2 beats {.1} = 1 -> 3/6 = .5
#   b: pos .5 beats none of {.7, .6} -> 0                      mean = .25
# MRR (groups with a positive: a, b, d):
#   a: (1/2 + 1/4) / 2 = .375;  b: 1/3;  d: 1          mean = (.375 + 1/3 + 1) / 3
# nDCG@5: a: (1/log2 3 + 1/log2 5) / (1 + 1/log2 3);  b: (1/log2 4) / 1 = .5;  d: 1
# nDCG@1: a: 0 (rank 1 is a negative);  b: 0;  d: 1                      mean = 1/3
# nDCG@3: a: (1/log2 3) / (1 + 1/log2 3);  b: .5;  d: 1
# HR@1: a 0, b 0, d 1 -> 1/3;  HR@3: a 1 (rank 2), b 1 (rank 3), d 1 -> 1;  HR@5: 1
_EXPECTED = {
    "group_auc": 0.25,
    "mrr": (0.375 + 1 / 3 + 1) / 3,
    "ndcg@1": 1 / 3,
    "hr@1": 1 / 3,
    "ndcg@3": ((1 / LOG2_3) / (1 + 1 / LOG2_3) + 0.5 + 1) / 3,
    "hr@3": 1.0,
    "ndcg@5": ((1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3) + 0.5 + 1) / 3,
    "hr@5": 1.0,
    "groups": 2,
    "groups_with_positive": 3,
}


@pytest.mark.parametrize("interleave", [False, True])
def test_ranking_metrics_hand_computed(interleave):
    labels, scores, groups = _hand_example(interleave)
    result = metrics.ranking_metrics(labels, scores, groups, ks=(1, 3, 5))
    assert result == pytest.approx(_EXPECTED)
    assert isinstance(result["groups"], int)
    assert isinstance(result["groups_with_positive"], int)


def test_ranking_metrics_ties_broken_by_row_order():
    # Tied scores: the earlier row ranks first. Group AUC gives the tie 0.5.
    negative_first = metrics.ranking_metrics([0, 1], [0.5, 0.5], [0, 0], ks=(1,))
    positive_first = metrics.ranking_metrics([1, 0], [0.5, 0.5], [0, 0], ks=(1,))
    assert negative_first["mrr"] == pytest.approx(0.5)
    assert negative_first["hr@1"] == 0.0
    assert positive_first["mrr"] == pytest.approx(1.0)
    assert positive_first["hr@1"] == 1.0
    assert negative_first["group_auc"] == positive_first["group_auc"] == 0.5


def test_ranking_metrics_non_contiguous_groups_match_contiguous():
    labels, scores, groups, _ = _random_impressions(seed=0)
    contiguous = metrics.ranking_metrics(labels, scores, groups)
    perm = np.random.default_rng(1).permutation(len(labels))
    shuffled = metrics.ranking_metrics(labels[perm], scores[perm], groups[perm])
    # String ids work too and do not change anything.
    as_strings = metrics.ranking_metrics(
        labels[perm], scores[perm], np.array([f"imp-{g}" for g in groups[perm]])
    )
    assert shuffled == pytest.approx(contiguous)
    assert as_strings == pytest.approx(contiguous)


def test_ranking_metrics_match_mind_reference_scorer():
    labels, scores, groups, _ = _random_impressions(seed=2, num_groups=60)
    result = metrics.ranking_metrics(labels, scores, groups, ks=(5, 10))
    aucs, mrrs, ndcg5, ndcg10 = [], [], [], []
    for g in np.unique(groups):
        y, s = labels[groups == g], scores[groups == g]
        if y.sum() == 0:
            continue
        mrrs.append(_mind_mrr_score(y, s))
        ndcg5.append(_mind_ndcg_score(y, s, k=5))
        ndcg10.append(_mind_ndcg_score(y, s, k=10))
        if (y == 0).any():
            aucs.append(_pairwise_auc(y, s))
    assert result["group_auc"] == pytest.approx(np.mean(aucs))
    assert result["mrr"] == pytest.approx(np.mean(mrrs))
    assert result["ndcg@5"] == pytest.approx(np.mean(ndcg5))
    assert result["ndcg@10"] == pytest.approx(np.mean(ndcg10))
    assert result["groups"] == len(aucs)
    assert result["groups_with_positive"] == len(mrrs)


def test_ranking_metrics_match_keras_rs_with_one_positive_per_group():
    keras_rs = pytest.importorskip("keras_rs")
    labels, scores, groups, sizes = _random_impressions(
        seed=5, num_groups=30, max_size=15, one_positive=True
    )
    ours = metrics.ranking_metrics(labels, scores, groups, ks=(5, 10))

    # Pad to [num_groups, max_size]; padded entries are masked out.
    width = int(sizes.max())
    padded_labels = np.zeros((len(sizes), width), dtype=np.float32)
    padded_scores = np.zeros((len(sizes), width), dtype=np.float32)
    mask = np.zeros((len(sizes), width), dtype=bool)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    for i, (start, size) in enumerate(zip(starts, sizes)):
        padded_labels[i, :size] = labels[start : start + size]
        padded_scores[i, :size] = scores[start : start + size]
        mask[i, :size] = True
    y_true = {"labels": padded_labels, "mask": mask}

    for k in (5, 10):
        ndcg = keras_rs.metrics.NDCG(k=k, shuffle_ties=False)
        ndcg.update_state(y_true, padded_scores)
        assert ours[f"ndcg@{k}"] == pytest.approx(float(ndcg.result()), abs=1e-5)
    # With exactly one positive per list, MIND's sum(y/rank)/sum(y) is standard MRR.
    mrr = keras_rs.metrics.MeanReciprocalRank(shuffle_ties=False)
    mrr.update_state(y_true, padded_scores)
    assert ours["mrr"] == pytest.approx(float(mrr.result()), abs=1e-5)


def test_ranking_metrics_without_qualifying_groups_are_nan():
    result = metrics.ranking_metrics([0, 0, 0], [0.1, 0.2, 0.3], [1, 1, 2], ks=(5,))
    assert math.isnan(result["group_auc"])
    assert math.isnan(result["mrr"])
    assert math.isnan(result["ndcg@5"])
    assert result["groups"] == 0 and result["groups_with_positive"] == 0


# --- evaluate_predictions ----------------------------------------------------


def test_evaluate_predictions_keys_values_and_json():
    labels = np.array([1, 0, 0, 1])
    logits = np.array([0.0, math.log(3.0), -1000.0, 1000.0])  # p = .5, .75, 0, 1
    groups = np.array([1, 1, 2, 2])
    true_p = np.array([0.6, 0.3, 0.1, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # extreme logits must not overflow
        result = metrics.evaluate_predictions(labels, logits, groups, true_p, ks=(1,))

    expected_keys = {
        "auc", "pr_auc", "logloss", "ece", "accuracy", "precision", "recall", "f1",
        "group_auc", "mrr", "ndcg@1", "hr@1", "groups", "groups_with_positive",
        "examples", "positive_rate", "oracle_auc", "oracle_logloss",
    }
    assert set(result) == expected_keys
    for value in result.values():
        assert type(value) in (float, int)
    json.dumps(result)

    # logloss on clipped probabilities [.5, .75, 1e-7, 1 - 1e-7]:
    expected_logloss = -(math.log(0.5) + math.log(0.25) + 2 * math.log(1 - 1e-7)) / 4
    assert result["logloss"] == pytest.approx(expected_logloss)
    # AUC: positives (0, 1000) vs negatives (log 3, -1000): 3 of 4 pairs.
    assert result["auc"] == pytest.approx(0.75)
    # group 1 ranks the negative first; group 2 the positive first.
    assert result["mrr"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["group_auc"] == pytest.approx(0.5)
    assert result["examples"] == 4 and result["positive_rate"] == 0.5
    # Oracle: true probabilities rank both positives above both negatives.
    assert result["oracle_auc"] == pytest.approx(1.0)
    assert result["oracle_logloss"] == pytest.approx(metrics.logloss(labels, true_p))


def test_evaluate_predictions_without_true_probabilities_has_no_oracle_keys():
    result = metrics.evaluate_predictions([1, 0], [1.0, -1.0], [0, 0])
    assert "oracle_auc" not in result and "oracle_logloss" not in result
    assert result["ndcg@5"] == 1.0 and result["ndcg@10"] == 1.0


# --- sampled_ranking_metrics -------------------------------------------------


def test_sampled_ranking_metrics_two_users():
    scores = np.array(
        [
            # positive 0.5; negatives .9 (above), .5 (tie -> above), .1, .2 -> rank 3
            [0.5, 0.9, 0.1, 0.5, 0.2],
            # positive 0.8 above all negatives -> rank 1
            [0.8, 0.1, 0.2, 0.3, 0.4],
        ]
    )
    result = metrics.sampled_ranking_metrics(scores, ks=(2, 10))
    np.testing.assert_allclose(result["hr@2"], [0.0, 1.0])
    np.testing.assert_allclose(result["ndcg@2"], [0.0, 1.0])
    np.testing.assert_allclose(result["hr@10"], [1.0, 1.0])
    np.testing.assert_allclose(result["ndcg@10"], [1 / math.log2(4), 1.0])  # [.5, 1]
    np.testing.assert_allclose(result["mrr"], [1 / 3, 1.0])
    # user 1: below {.1, .2} = 2, tied 1 -> (2 + .5) / 4
    np.testing.assert_allclose(result["auc"], [0.625, 1.0])
    assert all(v.shape == (2,) for v in result.values())

    # Same users with the positive moved to the last column.
    moved = np.concatenate([scores[:, 1:], scores[:, :1]], axis=1)
    result_moved = metrics.sampled_ranking_metrics(moved, positive_index=4, ks=(2, 10))
    for key in result:
        np.testing.assert_allclose(result_moved[key], result[key])


def test_sampled_ranking_metrics_default_keys():
    result = metrics.sampled_ranking_metrics(np.zeros((3, 4)))
    assert set(result) == {"hr@10", "ndcg@10", "mrr", "auc"}
    # All tied: pessimistic rank 4 of 4, AUC 0.5.
    np.testing.assert_allclose(result["mrr"], [0.25] * 3)
    np.testing.assert_allclose(result["auc"], [0.5] * 3)


# --- bootstrap_ci ------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(0).random(500)
    low, high = metrics.bootstrap_ci(values, num_samples=300, seed=7)
    assert low < values.mean() < high
    assert isinstance(low, float) and isinstance(high, float)
    assert metrics.bootstrap_ci(values, num_samples=300, seed=7) == (low, high)
    assert metrics.bootstrap_ci(values, num_samples=300, seed=8) != (low, high)
    narrow = metrics.bootstrap_ci(values, num_samples=300, confidence=0.5, seed=7)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_ci_constant_values():
    assert metrics.bootstrap_ci([0.3] * 10, num_samples=50) == pytest.approx((0.3, 0.3))
