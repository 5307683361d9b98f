"""Every audit measure exact on hand-made inputs (trainer/responsible/fairness.py)."""

import math

import numpy as np
import pytest

from trainer.responsible import fairness
from trainer.evaluation import metrics

# Five catalogue items (indices 1..5); entry 0 is "no item".
COUNTS = np.array([0, 10, 6, 3, 1, 0], dtype=np.float64)


def test_long_tail_is_everything_outside_the_most_clicked_fifth():
    # ceil(0.2 * 5) = 1 head item: item 1.
    np.testing.assert_array_equal(fairness.long_tail_mask(COUNTS),
                                  [False, False, True, True, True, True])
    # 40% -> 2 head items; ties go to the lower index.
    np.testing.assert_array_equal(fairness.long_tail_mask([0, 1, 5, 5, 5], 0.4),
                                  [False, True, False, False, True])
    with pytest.raises(ValueError, match="head_fraction"):
        fairness.long_tail_mask(COUNTS, 1.0)


def test_gini():
    assert fairness.gini([1, 1, 1, 1]) == 0.0
    assert fairness.gini([0, 0, 0, 4]) == pytest.approx(3 / 4)
    # sorted x = 1, 2, 3: 2 * (1 + 4 + 9) / (3 * 6) - 4 / 3 = 2/9
    assert fairness.gini([3, 1, 2]) == pytest.approx(2 / 9)
    assert fairness.gini([0, 0]) == 0.0


def test_popularity_bias_of_hand_made_lists():
    tail = fairness.long_tail_mask(COUNTS)
    ranking = np.array([[1, 2], [1, 4], [3, -1]])
    per_list = fairness.popularity_per_list(ranking, COUNTS, tail)
    np.testing.assert_allclose(per_list["arp"], [8.0, 5.5, 3.0])
    np.testing.assert_allclose(per_list["aplt"], [0.5, 0.5, 1.0])
    profile = fairness.profile_popularity([[2, 3], [4], []], COUNTS)
    np.testing.assert_allclose(profile[:2], [4.5, 1.0])
    assert math.isnan(profile[2])
    bias = fairness.popularity_bias(ranking, COUNTS, tail, profile)
    assert bias["arp"] == pytest.approx((8 + 5.5 + 3) / 3)
    assert bias["aplt"] == pytest.approx(2 / 3)
    assert bias["coverage"] == pytest.approx(4 / 5)  # items 1-4 recommended, 5 never
    assert bias["gini"] == pytest.approx(fairness.gini([2, 1, 1, 1, 0]))
    # users 0 and 1 have profiles: ARP 8, 5.5 against 4.5, 1.0
    assert bias["popularity_lift"] == pytest.approx((6.75 - 2.75) / 2.75)


def test_group_exposure_against_merit():
    # Items 1, 2 in group 0; 3, 4 in group 1; 5 in no group.
    item_group = np.array([-1, 0, 0, 1, 1, -1])
    ranking = np.array([[1, 3, 5], [4, 2, -1]])
    merit = np.array([[0.5, 0.5, 0.9], [0.2, 0.8, 0.0]])
    w1, w2 = 1.0, 1 / math.log2(3)
    result = fairness.group_exposure(ranking, merit, item_group, 2)
    np.testing.assert_allclose(result["exposure"], [w1 + w2, w2 + w1])
    np.testing.assert_allclose(result["merit"], [1.3, 0.7])
    np.testing.assert_allclose(result["exposure_share"], [0.5, 0.5])
    np.testing.assert_allclose(result["merit_share"], [0.65, 0.35])
    np.testing.assert_allclose(result["disparity"], [0.5 / 0.65 - 1, 0.5 / 0.35 - 1])
    assert result["total_variation"] == pytest.approx(0.15)
    # k = 1: only the first of each list is exposed.
    top1 = fairness.group_exposure(ranking, merit, item_group, 2, k=1)
    np.testing.assert_allclose(top1["exposure"], [1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        fairness.group_exposure(ranking, merit[:1], item_group, 2)


def test_log_odds_shift_recovers_a_known_shift():
    reference = np.array([0.1, 0.3, 0.5, 0.7])
    logit = np.log(reference / (1 - reference))
    shifted = 1 / (1 + np.exp(-(logit + 0.8)))
    # Fitting probabilities exactly shifted by 0.8 gives 0.8; unshifted gives 0.
    assert fairness.log_odds_shift(shifted, reference) == pytest.approx(0.8, abs=1e-6)
    assert fairness.log_odds_shift(reference, reference) == pytest.approx(0.0, abs=1e-6)
    # Clicks: the MLE solves mean(sigmoid(logit + b)) = click rate.
    clicks = np.array([1, 0, 1, 1])
    b = fairness.log_odds_shift(clicks, reference)
    assert np.mean(1 / (1 + np.exp(-(logit + b)))) == pytest.approx(0.75, abs=1e-6)
    assert fairness.log_odds_shift([0, 0], [0.5, 0.5]) == -math.inf
    assert fairness.log_odds_shift([1, 1], [0.5, 0.5]) == math.inf


def test_impression_ndcg_matches_the_ranking_metrics():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 6)
    labels = (rng.random(len(groups)) < 0.3).astype(float)
    scores = np.round(rng.random(len(groups)), 1)  # ties broken by row order in both
    ids, ndcg = fairness.impression_ndcg(labels, scores, groups, k=3)
    expected = metrics.ranking_metrics(labels, scores, groups, ks=(3,))
    assert ndcg.mean() == pytest.approx(expected["ndcg@3"])
    assert len(ids) == expected["groups_with_positive"]
    # One impression by hand: clicks at ranks 2 and 3 of 3.
    _, one = fairness.impression_ndcg([0, 1, 1], [0.9, 0.5, 0.1], [7, 7, 7], k=10)
    ideal = 1 + 1 / math.log2(3)
    assert one[0] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / ideal)


def test_activity_groups_are_quantiles():
    index, labels = fairness.activity_groups([1, 2, 3, 4, 5, 6, 7, 8], num_groups=4)
    np.testing.assert_array_equal(index, [0, 0, 1, 1, 2, 2, 3, 3])
    assert labels == ["q1: 1-2 clicks", "q2: 3-4 clicks", "q3: 5-6 clicks", "q4: 7-8 clicks"]
    # Equal activities cannot be split: fewer groups.
    index, labels = fairness.activity_groups([5, 5, 5, 9], num_groups=4)
    assert len(labels) == 2 and index.tolist() == [0, 0, 0, 1]


def test_user_group_metrics_per_group_and_gaps():
    # Group a ranks perfectly, group b inverts every impression.
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0], dtype=float)
    probs = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.4, 0.6])
    impressions = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    user_group = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    result = fairness.user_group_metrics(labels, probs, impressions, user_group, ["a", "b"],
                                         bootstrap=50)
    a, b = result["groups"]["a"], result["groups"]["b"]
    assert a["auc"] == 1.0 and b["auc"] == 0.0
    assert a["ndcg@10"] == 1.0 and b["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert a["ece"] == pytest.approx(metrics.expected_calibration_error(labels[:4], probs[:4]))
    assert result["gaps"]["auc"] == 1.0
    assert result["gaps"]["ndcg@10"] == pytest.approx(1 - 1 / math.log2(3))
    low, high = a["intervals"]["ece"]
    assert low <= a["ece"] <= high
    assert a["rows"] == 4 and a["impressions"] == 2


def test_bootstrap_interval_covers_the_statistic():
    values = np.arange(100, dtype=float)
    low, high = fairness.bootstrap_interval(lambda idx: values[idx].mean(), 100, seed=1)
    assert low < values.mean() < high
    assert all(math.isnan(v) for v in fairness.bootstrap_interval(lambda idx: 0.0, 0))


def test_popularity_rerank_trades_relevance_for_the_tail():
    counts = np.array([0, 100, 50, 10, 1, 0], dtype=float)
    ranking = np.array([[1, 2, 3, 4, -1]])
    scores = np.array([[4.0, 3.0, 2.0, 1.0, 0.0]])
    # Weight 0 keeps the model's order; 1 orders by unpopularity alone.
    np.testing.assert_array_equal(fairness.popularity_rerank(ranking, scores, counts, 0.0, 3),
                                  [[1, 2, 3]])
    np.testing.assert_array_equal(fairness.popularity_rerank(ranking, scores, counts, 1.0, 3),
                                  [[4, 3, 2]])
    # In between: the mix of the standardised score and log popularity.
    z_score = (np.array([4, 3, 2, 1]) - 2.5) / np.std([4, 3, 2, 1])
    z_pop = np.log1p([100, 50, 10, 1])
    z_pop = (z_pop - z_pop.mean()) / z_pop.std()
    expected = np.array([1, 2, 3, 4])[np.argsort(-(0.7 * z_score - 0.3 * z_pop),
                                                 kind="stable")][:4]
    np.testing.assert_array_equal(
        fairness.popularity_rerank(ranking, scores, counts, 0.3, 4)[0], expected)
    with pytest.raises(ValueError, match="weight"):
        fairness.popularity_rerank(ranking, scores, counts, 1.5, 3)


def test_list_ndcg_counts_missed_relevant_items():
    ranking = np.array([[5, 3, 9], [1, 2, -1]])
    ndcg = fairness.list_ndcg(ranking, [{3}, {7, 1}], k=3)
    assert ndcg[0] == pytest.approx(1 / math.log2(3))
    assert ndcg[1] == pytest.approx(1.0 / (1 + 1 / math.log2(3)))
    assert math.isnan(fairness.list_ndcg(ranking[:1], [set()], k=3)[0])
