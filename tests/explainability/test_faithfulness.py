"""Faithfulness metrics (explainability/faithfulness.py) against hand-computed values.

The token and history metrics are checked with stand-in scorers whose click probability is
an additive function of which words (history titles) are present, so that every erased
variant's score, and hence every metric, can be worked out by hand.
"""

import math

import numpy as np
import pytest

from bert_recommender.explainability import faithfulness
from bert_recommender.explainability.faithfulness import (beats, bin_counts, curve_auc, history_faithfulness,
                                         mean_ci, order_by, summarize, token_faithfulness,
                                         truth_at_k)
from bert_recommender.explainability.history_attributions import Case
from bert_recommender.explainability.pair_scorer import ITEM, USER, PairScorer, Word
from tests.harness import ITEM_TEXT, USER_TEXT, make_packer

TOL = 1e-9


# -- bin_counts / order_by / curve_auc --------------------------------------------------------


@pytest.mark.parametrize("num, expected", [
    (20, [1, 1, 2, 4, 10]),
    (3, [1, 1, 1, 1, 2]),
    (1, [1, 1, 1, 1, 1]),
    (10, [1, 1, 1, 2, 5]),
    (100, [1, 5, 10, 20, 50]),
    (30, [1, 2, 3, 6, 15]),  # 0.1 * 30 and 0.2 * 30 are not exact in floating point
    (101, [2, 6, 11, 21, 51]),
])
def test_bin_counts_examples(num, expected):
    assert bin_counts(num) == expected


def test_bin_counts_round_up_and_stay_in_range():
    percents = (1, 5, 10, 20, 50)
    assert faithfulness.BINS == tuple(p / 100 for p in percents)
    for num in range(1, 301):
        counts = bin_counts(num)
        # ceil(p% of num) in exact integer arithmetic, at least 1.
        assert counts == [max(1, -(-num * p // 100)) for p in percents], num
        assert all(1 <= c <= num for c in counts), num
        assert counts == sorted(counts), num


def test_bin_counts_custom_bins():
    assert bin_counts(4, bins=(0.25, 1.0)) == [1, 4]
    assert bin_counts(7, bins=(1.0 / 7,)) == [1]
    assert bin_counts(5, bins=(2.0,)) == [5]  # capped at num


def test_order_by_descending_with_stable_ties():
    order = order_by([0.1, 0.5, 0.5, -1.0, 0.5])
    assert order.tolist() == [1, 2, 4, 0, 3]
    assert order_by([0.0, 0.0, 0.0]).tolist() == [0, 1, 2]
    assert order_by([-3, 2, 1]).tolist() == [1, 2, 0]
    # Long enough that an unstable sort would reorder ties.
    values = [i % 3 for i in range(300)]
    expected = [i for v in (2, 1, 0) for i in range(300) if i % 3 == v]
    assert order_by(values).tolist() == expected


def test_curve_auc_hand_computed():
    # Three points at 0, 0.5, 1: 0.5 * (1 + 0.5) / 2 + 0.5 * (0.5 + 0) / 2.
    assert curve_auc([1.0, 0.5, 0.0]) == pytest.approx(0.5, abs=TOL)
    # Eleven points (CURVE_FRACTIONS): a spike at 0 that drops at 0.1 -> one triangle.
    assert curve_auc([1.0] + [0.0] * 10) == pytest.approx(0.05, abs=TOL)
    # Constant curve: area = the constant.
    assert curve_auc([0.3] * 11) == pytest.approx(0.3, abs=TOL)
    # 0.7, 0.7, 0.4 then zeros: 0.1 * (0.7 + (0.7 + 0.4) / 2 + 0.4 / 2) = 0.145.
    assert curve_auc([0.7, 0.7, 0.4] + [0.0] * 8) == pytest.approx(0.145, abs=TOL)


# -- truth_at_k --------------------------------------------------------------------------------


def test_truth_at_k_capped_precision():
    ranked = ["laptop", "acme", "wireless", "pro", "new", "camera"]
    result = truth_at_k(ranked, ["laptop", "wireless"], k=5)
    # Both true words in the top 5: precision divides by min(5, 2) = 2.
    assert result == {"truth_precision@5": 1.0, "truth_recall@5": 1.0}


def test_truth_at_k_partial_hits():
    ranked = ["a", "b", "c", "d", "e", "f", "g"]
    truth = ["a", "c", "f", "x", "y", "z", "w"]
    result = truth_at_k(ranked, truth, k=5)
    assert result["truth_precision@5"] == pytest.approx(2 / 5)  # a, c of min(5, 7)
    assert result["truth_recall@5"] == pytest.approx(2 / 7)


def test_truth_at_k_collapses_duplicates_and_ignores_case():
    # Without collapsing, "wireless" would be outside the top 2.
    ranked = ["Laptop", "laptop", "LAPTOP", "Wireless", "pro"]
    result = truth_at_k(ranked, {"WIRELESS"}, k=2)
    assert result == {"truth_precision@2": 1.0, "truth_recall@2": 1.0}
    # Only the first k distinct entries count.
    assert truth_at_k(ranked, {"pro"}, k=2) == {"truth_precision@2": 0.0,
                                               "truth_recall@2": 0.0}


def test_truth_at_k_history_ids_and_empty_truth():
    assert truth_at_k([12, 7], [12], k=1) == {"truth_precision@1": 1.0, "truth_recall@1": 1.0}
    assert truth_at_k([7, 12], ["12"], k=1) == {"truth_precision@1": 0.0,
                                                "truth_recall@1": 0.0}
    assert truth_at_k(["a", "b"], [], k=5) == {}
    assert truth_at_k(["a", "b"], set(), k=1) == {}


# -- mean_ci / summarize / beats ------------------------------------------------------------------


def test_mean_ci_constant_values_collapse():
    mean, (lo, hi) = mean_ci([0.25] * 7)
    assert mean == 0.25 and lo == 0.25 and hi == 0.25


def test_mean_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(3).normal(size=40)
    mean, (lo, hi) = mean_ci(values, seed=5)
    assert mean == pytest.approx(values.mean(), abs=TOL)
    assert lo < mean < hi
    assert mean_ci(values, seed=5) == (mean, [lo, hi])
    assert mean_ci(values, seed=6)[1] != [lo, hi]
    # A wider level gives a wider interval (same bootstrap resamples).
    _, (lo99, hi99) = mean_ci(values, seed=5, level=0.99)
    _, (lo50, hi50) = mean_ci(values, seed=5, level=0.50)
    assert lo99 <= lo < lo50 < hi50 < hi <= hi99


def test_mean_ci_drops_missing_values():
    mean, (lo, hi) = mean_ci([1.0, None, float("nan"), 3.0, float("inf")])
    assert mean == 2.0
    assert 1.0 <= lo <= hi <= 3.0
    mean, interval = mean_ci([None, float("nan")])
    assert math.isnan(mean) and all(math.isnan(v) for v in interval)


def test_summarize_scalar_metrics_only():
    rows = [{"aopc": 0.2, "per_bin": [1, 2], "name": "x"}, {"aopc": 0.4}, {"aopc": None}]
    summary = summarize(rows)
    assert summary["examples"] == 3
    assert summary["aopc"] == pytest.approx(0.3)
    assert summary["aopc_ci"][0] <= 0.3 <= summary["aopc_ci"][1]
    assert "per_bin" not in summary and "name" not in summary


def _ci(metric, lo, hi):
    return {metric: (lo + hi) / 2, metric + "_ci": [lo, hi]}


@pytest.mark.parametrize("metric", ["comprehensiveness", "aopc", "insertion_auc"])
def test_beats_higher_is_better(metric):
    assert beats(_ci(metric, 0.3, 0.4), _ci(metric, 0.1, 0.2), metric) is True
    assert beats(_ci(metric, 0.1, 0.2), _ci(metric, 0.3, 0.4), metric) is False
    assert beats(_ci(metric, 0.15, 0.4), _ci(metric, 0.1, 0.2), metric) is False  # overlap
    assert beats(_ci(metric, 0.2, 0.4), _ci(metric, 0.1, 0.2), metric) is False  # touching


@pytest.mark.parametrize("metric", ["sufficiency", "deletion_auc"])
def test_beats_lower_is_better(metric):
    assert beats(_ci(metric, 0.1, 0.2), _ci(metric, 0.3, 0.4), metric) is True
    assert beats(_ci(metric, 0.3, 0.4), _ci(metric, 0.1, 0.2), metric) is False
    assert beats(_ci(metric, 0.1, 0.35), _ci(metric, 0.3, 0.4), metric) is False  # overlap
    assert beats(_ci(metric, 0.1, 0.3), _ci(metric, 0.3, 0.4), metric) is False  # touching


def test_beats_missing_metric():
    assert beats({}, _ci("aopc", 0.1, 0.2), "aopc") is None
    assert beats(_ci("aopc", 0.1, 0.2), {"aopc": 0.15}, "aopc") is None


# -- token_faithfulness with an additive stand-in model ---------------------------------------

CLS, SEP, PAD = 2, 3, 0
# One packed row: [CLS] w0 w1 w2 w3(2 pieces) [SEP] w4 .. w9 [SEP] [PAD] x3.
TOKEN_IDS = np.array([CLS, 10, 11, 12, 13, 40, SEP, 14, 15, 16, 17, 18, 19, SEP, PAD, PAD, PAD],
                     dtype=np.int32)
SEGMENT_IDS = np.array([0] * 7 + [1] * 7 + [0] * 3, dtype=np.int32)
WORDS = ([Word(f"u{i}", USER, 0, (i + 1,)) for i in range(3)]
         + [Word("u3", USER, 0, (4, 5))]
         + [Word(f"i{i}", ITEM, 0, (i + 3,)) for i in range(4, 10)])
# True per-word contributions; word 3's 0.08 is split over its two pieces.
WORD_WEIGHTS = [0.02, 0.15, 0.0, 0.08, 0.01, 0.12, 0.03, 0.05, 0.04, 0.10]
PIECE_WEIGHTS = {10: 0.02, 11: 0.15, 12: 0.0, 13: 0.05, 40: 0.03, 14: 0.01, 15: 0.12,
                 16: 0.03, 17: 0.05, 18: 0.04, 19: 0.10}
BASE = 0.1
FULL_SCORE = BASE + sum(WORD_WEIGHTS)  # 0.70


class AdditiveTokenScorer(PairScorer):
    """score = 0.1 + the weights of the pieces present; erase is PairScorer's own."""

    def __init__(self, weights):  # no model, no packer: only erase + probabilities are used
        self.weights = weights
        self.calls = []
        self.segment_of = {int(t): int(s) for t, s in zip(TOKEN_IDS, SEGMENT_IDS)
                           if t not in (PAD, CLS, SEP)}  # [SEP] closes both segments

    def probabilities(self, token_ids, segment_ids):
        token_ids, segment_ids = np.atleast_2d(token_ids), np.atleast_2d(segment_ids)
        self.calls.append(len(token_ids))
        scores = []
        for ids, segments in zip(token_ids, segment_ids):
            kept = [int(t) for t in ids if t != PAD]
            # Erasing closes the gap: the kept tokens come first, in order, then padding,
            # and every token keeps its segment; the structure tokens are never erased.
            assert list(ids[:len(kept)]) == kept and not ids[len(kept):].any()
            assert all(self.segment_of[int(t)] == int(s)
                       for t, s in zip(ids[:len(kept)], segments[:len(kept)])
                       if t not in (CLS, SEP))
            assert kept[0] == CLS and kept.count(SEP) == 2
            scores.append(BASE + sum(self.weights.get(t, 0.0) for t in kept))
        return np.array(scores)


def test_fake_scorer_full_row_score():
    scorer = AdditiveTokenScorer(PIECE_WEIGHTS)
    assert scorer.probabilities(TOKEN_IDS, SEGMENT_IDS)[0] == pytest.approx(0.70, abs=TOL)
    erased = np.zeros((1, 10), dtype=bool)
    erased[0, 3] = True  # the two-piece word
    assert scorer.probabilities(*scorer.erase(TOKEN_IDS, SEGMENT_IDS, WORDS, erased))[0] == \
        pytest.approx(0.62, abs=TOL)


def test_token_faithfulness_true_weights_hand_computed():
    scorer = AdditiveTokenScorer(PIECE_WEIGHTS)
    metrics = token_faithfulness(scorer, TOKEN_IDS, SEGMENT_IDS, WORDS, WORD_WEIGHTS,
                                 FULL_SCORE)
    # Order by weight: w1 .15, w5 .12, w9 .10, w3 .08, w7 .05, w8 .04, w6 .03, w0 .02,
    # w4 .01, w2 0. Top-k sums S_0..S_10 = 0 .15 .27 .37 .45 .50 .54 .57 .59 .60 .60.
    # W = 10 -> bins select [1, 1, 1, 2, 5] words.
    # comprehensiveness_k = p - f(x \ top-k) = S_k: .15 .15 .15 .27 .50 -> mean 0.244.
    assert metrics["per_bin"]["comprehensiveness"] == pytest.approx(
        [0.15, 0.15, 0.15, 0.27, 0.50], abs=TOL)
    assert metrics["comprehensiveness"] == pytest.approx(0.244, abs=TOL)
    # sufficiency_k = p - f(top-k only) = 0.6 - S_k: .45 .45 .45 .33 .10 -> mean 0.356.
    assert metrics["per_bin"]["sufficiency"] == pytest.approx(
        [0.45, 0.45, 0.45, 0.33, 0.10], abs=TOL)
    assert metrics["sufficiency"] == pytest.approx(0.356, abs=TOL)
    # aopc = mean(S_1 .. S_10) = 4.64 / 10.
    assert metrics["aopc"] == pytest.approx(0.464, abs=TOL)
    # deletion curve 0.7 - S_k at k = 0..10: sum 3.06; trapezoid 0.1 * (3.06 - (.7 + .1) / 2).
    assert metrics["deletion_auc"] == pytest.approx(0.266, abs=TOL)
    # insertion curve 0.1 + S_k: sum 5.74; 0.1 * (5.74 - (.1 + .7) / 2).
    assert metrics["insertion_auc"] == pytest.approx(0.534, abs=TOL)
    # Every variant is scored in one batch: 5 + 5 + 10 + 11 + 11 rows.
    assert scorer.calls == [42]


def test_token_faithfulness_reversed_ordering_hand_computed():
    scorer = AdditiveTokenScorer(PIECE_WEIGHTS)
    reverse = [-w for w in WORD_WEIGHTS]
    metrics = token_faithfulness(scorer, TOKEN_IDS, SEGMENT_IDS, WORDS, reverse, FULL_SCORE)
    # Ascending weights: w2 0, w4 .01, w0 .02, w6 .03, w8 .04, w7 .05, w3 .08, w9 .10,
    # w5 .12, w1 .15 -> R_0..R_10 = 0 0 .01 .03 .06 .10 .15 .23 .33 .45 .60.
    assert metrics["per_bin"]["comprehensiveness"] == pytest.approx(
        [0.0, 0.0, 0.0, 0.01, 0.10], abs=TOL)
    assert metrics["comprehensiveness"] == pytest.approx(0.022, abs=TOL)
    assert metrics["sufficiency"] == pytest.approx((0.6 * 3 + 0.59 + 0.50) / 5, abs=TOL)
    assert metrics["aopc"] == pytest.approx(1.96 / 10, abs=TOL)
    # deletion 0.7 - R_k: sum 5.74 -> 0.534; insertion 0.1 + R_k: sum 3.06 -> 0.266.
    assert metrics["deletion_auc"] == pytest.approx(0.534, abs=TOL)
    assert metrics["insertion_auc"] == pytest.approx(0.266, abs=TOL)

    good = token_faithfulness(scorer, TOKEN_IDS, SEGMENT_IDS, WORDS, WORD_WEIGHTS,
                              FULL_SCORE)
    assert good["comprehensiveness"] > metrics["comprehensiveness"]
    assert good["deletion_auc"] < metrics["deletion_auc"]
    assert good["sufficiency"] < metrics["sufficiency"]
    assert good["aopc"] > metrics["aopc"]
    assert good["insertion_auc"] > metrics["insertion_auc"]


def test_token_faithfulness_no_words():
    scorer = AdditiveTokenScorer(PIECE_WEIGHTS)
    assert token_faithfulness(scorer, TOKEN_IDS, SEGMENT_IDS, [], [], FULL_SCORE) == {}
    assert scorer.calls == []


class PieceWeightScorer(PairScorer):
    """The real PairScorer (packer, words, erase) with an additive stand-in model."""

    def __init__(self, packer, weight_of_id):
        super().__init__(model=None, packer=packer)
        self.weight_of_id = weight_of_id

    def probabilities(self, token_ids, segment_ids):
        return np.array([BASE + sum(self.weight_of_id(int(t)) for t in row)
                         for row in np.atleast_2d(token_ids)])


def test_token_faithfulness_through_real_packer_and_erase():
    packer = make_packer()
    specials = set()
    scorer = PieceWeightScorer(packer, lambda t: 0.0 if t in specials else 0.001 * (t % 13 + 1))
    specials.update({scorer.pad_id, scorer.cls_id, scorer.sep_id, scorer.separator_id})
    ids, segments = (a[0] for a in scorer.pack([USER_TEXT], [ITEM_TEXT]))
    words = scorer.words(ids, segments, has_query=True)
    assert len(words) == 15 and any(len(w.positions) == 2 for w in words)  # "laptops"
    word_weight = [sum(scorer.weight_of_id(int(ids[p])) for p in w.positions) for w in words]
    score = scorer.probabilities(ids, segments)[0]
    attributions = np.random.default_rng(0).normal(size=len(words))
    metrics = token_faithfulness(scorer, ids, segments, words, attributions, score)
    order = np.argsort(-attributions, kind="stable")
    top_sum = lambda k: sum(word_weight[i] for i in order[:k])  # noqa: E731
    counts = bin_counts(len(words))  # [1, 1, 2, 3, 8]
    assert counts == [1, 1, 2, 3, 8]
    assert metrics["per_bin"]["comprehensiveness"] == pytest.approx(
        [top_sum(k) for k in counts], abs=TOL)
    assert metrics["per_bin"]["sufficiency"] == pytest.approx(
        [sum(word_weight) - top_sum(k) for k in counts], abs=TOL)
    assert metrics["aopc"] == pytest.approx(np.mean([top_sum(k) for k in range(1, 11)]),
                                            abs=TOL)


# -- history_faithfulness with an additive stand-in model -------------------------------------

TITLES = ["t0", "t1", "t2", "t3"]  # oldest first
TITLE_WEIGHTS = {"t0": 0.05, "t1": 0.30, "t2": 0.10, "t3": 0.20}


def compose(query, titles):
    return " ; ".join(([query] if query else []) + titles[::-1])


class AdditiveHistoryScorer:
    """score_texts: 0.1 + the weights of the history titles on the user side."""

    def __init__(self, weights):
        self.weights = weights
        self.calls = []

    def score_texts(self, user_texts, item_texts):
        self.calls.append((list(user_texts), list(item_texts)))
        return np.array([BASE + sum(self.weights.get(part, 0.0) for part in u.split(" ; "))
                         for u in user_texts])


def history_case():
    return Case(query="looking for a laptop", history=[(f"id{i}", t) for i, t in
                                                      enumerate(TITLES)],
                candidate_id="c", candidate_text="candidate", candidate_title="Candidate")


def test_history_faithfulness_true_weights_hand_computed():
    scorer = AdditiveHistoryScorer(TITLE_WEIGHTS)
    case = history_case()
    attributions = [TITLE_WEIGHTS[t] for t in TITLES]
    metrics = history_faithfulness(scorer, case, compose, attributions, 0.75)
    # Order t1 .30, t3 .20, t2 .10, t0 .05 -> S_0..S_4 = 0 .30 .50 .60 .65.
    # n = 4: one-item bin; curve counts round(f * 4) = 0 0 1 1 2 2 2 3 3 4 4.
    assert set(metrics) == {"comprehensiveness", "sufficiency", "aopc", "deletion_auc",
                            "insertion_auc"}
    assert metrics["comprehensiveness"] == pytest.approx(0.30, abs=TOL)
    assert metrics["sufficiency"] == pytest.approx(0.75 - (0.1 + 0.30), abs=TOL)
    assert metrics["aopc"] == pytest.approx((0.30 + 0.50 + 0.60 + 0.65) / 4, abs=TOL)
    # deletion .75 .75 .45 .45 .25 .25 .25 .15 .15 .10 .10: 0.1 * (3.65 - 0.425).
    assert metrics["deletion_auc"] == pytest.approx(0.3225, abs=TOL)
    # insertion .1 .1 .4 .4 .6 .6 .6 .7 .7 .75 .75: 0.1 * (5.7 - 0.425).
    assert metrics["insertion_auc"] == pytest.approx(0.5275, abs=TOL)
    # The query stays on every variant; all variants go in one batch.
    assert len(scorer.calls) == 1
    users, items = scorer.calls[0]
    assert all(u.startswith("looking for a laptop") for u in users)
    assert set(items) == {"candidate"}


def test_history_faithfulness_reversed_ordering():
    scorer = AdditiveHistoryScorer(TITLE_WEIGHTS)
    case = history_case()
    reverse = [-TITLE_WEIGHTS[t] for t in TITLES]
    metrics = history_faithfulness(scorer, case, compose, reverse, 0.75)
    # Order t0 .05, t2 .10, t3 .20, t1 .30 -> R = 0 .05 .15 .35 .65.
    assert metrics["comprehensiveness"] == pytest.approx(0.05, abs=TOL)
    assert metrics["sufficiency"] == pytest.approx(0.60, abs=TOL)
    assert metrics["aopc"] == pytest.approx((0.05 + 0.15 + 0.35 + 0.65) / 4, abs=TOL)
    # deletion .75 .75 .70 .70 .60 .60 .60 .40 .40 .10 .10: sum 5.7 -> 0.5275.
    assert metrics["deletion_auc"] == pytest.approx(0.5275, abs=TOL)
    # insertion .1 .1 .15 .15 .25 .25 .25 .45 .45 .75 .75: sum 3.65 -> 0.3225.
    assert metrics["insertion_auc"] == pytest.approx(0.3225, abs=TOL)
    good = history_faithfulness(scorer, case, compose,
                                [TITLE_WEIGHTS[t] for t in TITLES], 0.75)
    assert good["comprehensiveness"] > metrics["comprehensiveness"]
    assert good["deletion_auc"] < metrics["deletion_auc"]


def test_history_faithfulness_empty_history():
    case = Case(query="q", history=[], candidate_id="c", candidate_text="x",
                candidate_title="X")
    assert history_faithfulness(AdditiveHistoryScorer({}), case, compose, [], 0.5) == {}
