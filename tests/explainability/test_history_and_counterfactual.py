"""History-item attributions (leave-one-out, Shapley) and verified counterfactuals.

The scorer is a stand-in: it parses the user side that ``Case.user_text`` builds (titles
joined by " ; ", newest first) and scores the candidate with a known set function of which
history titles are present; the impression's other candidates have fixed scores. Weights in
the counterfactual tests are dyadic (0.25, 0.125, ...) so that sums and ties are exact.
"""

import itertools

import numpy as np
import pytest

from bert_recommender.explainability.counterfactual import find_counterfactual, rank_of_first
from bert_recommender.explainability.history_attributions import (Case, exact_shapley, leave_one_out,
                                                 sampled_shapley, subset_scores)

TOL = 1e-12
QUERY = "looking for a laptop"


def compose(query, titles):
    return " ; ".join(([query] if query else []) + titles[::-1])


class SetFunctionScorer:
    """``score_texts``: the candidate's score is ``value(keep)`` (``keep`` flags which history
    titles, oldest first, are on the user side); other items have fixed scores."""

    def __init__(self, titles, value, other_scores=None, candidate_text="candidate"):
        self.titles = list(titles)
        self.value = value
        self.other_scores = dict(other_scores or {})
        self.candidate_text = candidate_text
        self.calls = []

    def keep_of(self, user_text):
        parts = user_text.split(" ; ")
        return np.array([title in parts for title in self.titles], dtype=bool)

    def score_texts(self, user_texts, item_texts):
        assert len(user_texts) == len(item_texts)
        self.calls.append((list(user_texts), list(item_texts)))
        return np.array([self.value(self.keep_of(u)) if item == self.candidate_text
                         else self.other_scores[item]
                         for u, item in zip(user_texts, item_texts)], dtype=np.float64)


def additive(weights, base=0.1):
    weights = np.asarray(weights, dtype=np.float64)
    return lambda keep: base + float(weights[np.asarray(keep, dtype=bool)].sum())


def make_case(titles, others=(), query=QUERY):
    return Case(query=query, history=[(f"id_{t}", t) for t in titles], candidate_id="cand",
                candidate_text="candidate", candidate_title="The Candidate",
                others=list(others))


TITLES4 = ["alpha", "bravo", "charlie", "delta"]  # oldest first


# -- Case / subset_scores ----------------------------------------------------------------------


def test_user_text_and_subset_scores():
    case = make_case(TITLES4)
    assert case.user_text(compose) == "looking for a laptop ; delta ; charlie ; bravo ; alpha"
    assert case.user_text(compose, np.array([True, False, True, False])) == \
        "looking for a laptop ; charlie ; alpha"
    assert make_case(TITLES4, query="").user_text(compose, np.zeros(4, bool)) == ""
    scorer = SetFunctionScorer(TITLES4, additive([0.1, 0.2, 0.3, 0.4]),
                               other_scores={"x": 0.7, "y": 0.9})
    keeps = np.array([[True] * 4, [False, True, False, True]])
    assert subset_scores(scorer, case, compose, keeps) == pytest.approx([1.1, 0.7])
    grid = subset_scores(scorer, case, compose, keeps, ["candidate", "x", "y"])
    assert grid.shape == (2, 3)
    assert grid == pytest.approx(np.array([[1.1, 0.7, 0.9], [0.7, 0.7, 0.9]]))


# -- leave_one_out -----------------------------------------------------------------------------


def test_leave_one_out_additive_equals_weights():
    weights = [0.05, 0.3, -0.1, 0.2]
    scorer = SetFunctionScorer(TITLES4, additive(weights))
    values = leave_one_out(scorer, make_case(TITLES4), compose)
    assert values == pytest.approx(weights, abs=TOL)  # oldest first, despite compose
    assert len(scorer.calls) == 1 and len(scorer.calls[0][0]) == 5  # full + 4 drops


def test_leave_one_out_with_interactions():
    # f = 0.1 + 0.5 * (a and b) + 0.25 * c: dropping a or b loses the pair's 0.5.
    value = lambda k: 0.1 + 0.5 * float(k[0] and k[1]) + 0.25 * float(k[2])  # noqa: E731
    scorer = SetFunctionScorer(TITLES4[:3], value)
    assert leave_one_out(scorer, make_case(TITLES4[:3]), compose) == \
        pytest.approx([0.5, 0.5, 0.25], abs=TOL)
    # A redundant pair (max): no single removal changes anything.
    scorer = SetFunctionScorer(TITLES4[:2], lambda k: 0.1 + 0.4 * float(k.max()))
    assert leave_one_out(scorer, make_case(TITLES4[:2]), compose) == \
        pytest.approx([0.0, 0.0], abs=TOL)


def test_leave_one_out_empty_history():
    scorer = SetFunctionScorer([], additive([]))
    assert leave_one_out(scorer, make_case([]), compose).shape == (0,)
    assert scorer.calls == []


# -- exact_shapley -----------------------------------------------------------------------------


def test_exact_shapley_additive_and_interactions():
    assert exact_shapley(additive([0.05, 0.3, -0.1, 0.2]), 4) == \
        pytest.approx([0.05, 0.3, -0.1, 0.2], abs=TOL)
    # Product of two flags: the 0.6 is shared equally.
    assert exact_shapley(lambda k: 0.6 * float(k[0] and k[1]), 2) == \
        pytest.approx([0.3, 0.3], abs=TOL)
    # max of three flags: 1/3 each.
    assert exact_shapley(lambda k: float(k.max()), 3) == pytest.approx([1 / 3] * 3, abs=TOL)
    # a*b + c: [0.5, 0.5, 1].
    assert exact_shapley(lambda k: float(k[0] and k[1]) + float(k[2]), 3) == \
        pytest.approx([0.5, 0.5, 1.0], abs=TOL)


# -- sampled_shapley ---------------------------------------------------------------------------


def interacting(keep):
    a, b, c, d, e = (float(x) for x in keep)
    return 0.1 + 0.3 * a * b * c + 0.2 * max(d, e) + 0.15 * max(a, e) - 0.05 * b * d


TITLES5 = TITLES4 + ["echo"]


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("num_permutations", [2, 5, 32])
def test_sampled_shapley_additive_is_exact(seed, num_permutations):
    weights = [0.05, 0.3, -0.1, 0.2, 0.0]
    scorer = SetFunctionScorer(TITLES5, additive(weights))
    values, used = sampled_shapley(scorer, make_case(TITLES5), compose, num_permutations,
                                   seed=seed)
    assert values == pytest.approx(weights, abs=TOL)


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_sampled_shapley_efficiency_with_interactions(seed):
    scorer = SetFunctionScorer(TITLES5, interacting)
    values, _ = sampled_shapley(scorer, make_case(TITLES5), compose, 6, seed=seed)
    total = interacting(np.ones(5, bool)) - interacting(np.zeros(5, bool))
    assert values.sum() == pytest.approx(total, abs=TOL)
    # Not additive, so the values are genuinely interaction-dependent (not all equal).
    assert np.ptp(values) > 0.01


def test_sampled_shapley_two_items_matches_exact():
    # With two items an order and its reverse are all the permutations, so the antithetic
    # estimate is exact for any set function.
    value = lambda k: 0.2 + 0.6 * float(k[0] and k[1]) + 0.1 * float(k[1])  # noqa: E731
    scorer = SetFunctionScorer(TITLES4[:2], value)
    for seed in range(3):
        values, used = sampled_shapley(scorer, make_case(TITLES4[:2]), compose, 8, seed=seed)
        assert values == pytest.approx(exact_shapley(value, 2), abs=TOL)
        assert values == pytest.approx([0.3, 0.4], abs=TOL)
        assert used == 8


def test_sampled_shapley_converges_to_exact():
    value = lambda k: interacting(np.concatenate([k, [False, False]]))  # noqa: E731
    scorer = SetFunctionScorer(TITLES4[:3], value)
    values, _ = sampled_shapley(scorer, make_case(TITLES4[:3]), compose, 2000, seed=0)
    assert values == pytest.approx(exact_shapley(value, 3), abs=0.01)


@pytest.mark.parametrize("requested, used", [(32, 32), (7, 6), (2, 2), (1, 2), (0, 2)])
def test_sampled_shapley_permutation_count_is_even(requested, used):
    scorer = SetFunctionScorer(TITLES4, additive([0.1] * 4))
    _, count = sampled_shapley(scorer, make_case(TITLES4), compose, requested)
    assert count == used and count % 2 == 0


def test_sampled_shapley_deterministic_by_seed_and_scores_each_subset_once():
    case = make_case(TITLES5)
    first = SetFunctionScorer(TITLES5, interacting)
    values, _ = sampled_shapley(first, case, compose, 4, seed=42)
    again, _ = sampled_shapley(SetFunctionScorer(TITLES5, interacting), case, compose, 4,
                               seed=42)
    np.testing.assert_array_equal(values, again)
    others = [sampled_shapley(SetFunctionScorer(TITLES5, interacting), case, compose, 4,
                              seed=s)[0] for s in range(1, 6)]
    assert any(not np.array_equal(values, o) for o in others)
    # One batch, each distinct subset once, including the empty and the full history.
    assert len(first.calls) == 1
    users = first.calls[0][0]
    assert len(users) == len(set(users))
    assert QUERY in users and case.user_text(compose) in users
    assert all(u.startswith(QUERY) for u in users)
    # 2 antithetic pairs of 5-item orders: at most 2 * 2 * 4 + 2 distinct subsets.
    assert len(users) <= 2 * 2 * 4 + 2


def test_sampled_shapley_empty_history():
    values, count = sampled_shapley(SetFunctionScorer([], additive([])), make_case([]),
                                    compose)
    assert values.shape == (0,) and count == 0


# -- rank_of_first -----------------------------------------------------------------------------


def test_rank_of_first():
    assert rank_of_first(np.array([0.5])) == 1
    assert rank_of_first(np.array([0.9, 0.1, 0.5])) == 1
    assert rank_of_first(np.array([0.1, 0.2, 0.3])) == 3
    assert rank_of_first(np.array([0.5, 0.5, 0.2])) == 2  # ties count against it
    assert rank_of_first(np.array([0.5, 0.4, 0.5, 0.5])) == 3
    assert rank_of_first(np.array([0.5, 0.6, 0.5])) == 3


# -- find_counterfactual -----------------------------------------------------------------------

ABCD = ["A", "B", "C", "D"]


def cf_setup(weights, others, base=0.125):
    titles = ABCD[:len(weights)]
    scorer = SetFunctionScorer(titles, additive(weights, base),
                               other_scores={text: s for text, s in others})
    case = make_case(titles, others=[(f"o{i}", text) for i, (text, _) in enumerate(others)])
    return scorer, case


def flips_without(scorer, case, removed, top_k=1):
    keep = np.ones(len(case.history), bool)
    keep[list(removed)] = False
    items = [case.candidate_text] + [t for _, t in case.others]
    scores = subset_scores(scorer, case, compose, keep[None], items)[0]
    return rank_of_first(scores) > top_k


def assert_minimal(scorer, case, indices):
    for size in range(len(indices)):
        for subset in itertools.combinations(indices, size):
            assert not flips_without(scorer, case, subset), subset


def test_counterfactual_single_item_flips():
    # candidate 0.125 + A .25 + B .0625 + C .0625 = 0.5; others 0.375 and 0.25.
    scorer, case = cf_setup([0.25, 0.0625, 0.0625], [("other one", 0.375), ("other two", 0.25)])
    result = find_counterfactual(scorer, case, compose, np.array([0.25, 0.0625, 0.0625]))
    assert result["found"] is True and result["verified"] is True
    assert result["criterion"] == "leaves the top 1 of its impression"
    assert result["removed"] == ["id_A"] and result["removed_titles"] == ["A"]
    assert result["removed_indices"] == [0]
    assert result["score_before"] == 0.5 and result["rank_before"] == 1
    # Without A: 0.25, tied with "other two" -> rank 3 (ties count against).
    assert result["score_after"] == 0.25 and result["rank_after"] == 3
    assert result["impression_size"] == 3
    assert result["tried"] == 2
    # Every trial re-scores the whole impression with the reduced history.
    assert len(scorer.calls) == 2
    assert all(items == ["candidate", "other one", "other two"] for _, items in scorer.calls)
    assert scorer.calls[1][0][0] == "looking for a laptop ; C ; B"


def test_counterfactual_pruning_drops_a_misleading_item():
    # A has the largest attribution but no effect; only B matters.
    # candidate 0.125 + A 0 + B .25 + C .125 = 0.5; other 0.375.
    scorer, case = cf_setup([0.0, 0.25, 0.125], [("other", 0.375)])
    result = find_counterfactual(scorer, case, compose, np.array([0.5, 0.25, 0.125]))
    # Greedy: -A 0.5 (rank 1), -A-B 0.25 (flip). Prune A: -B alone 0.25 flips -> {B}.
    assert result["found"] and result["verified"]
    assert result["removed"] == ["id_B"] and result["removed_indices"] == [1]
    assert result["score_after"] == 0.25 and result["rank_after"] == 2
    assert result["tried"] == 1 + 2 + 1
    assert_minimal(scorer, case, result["removed_indices"])


def test_counterfactual_pruning_keeps_a_needed_pair():
    # candidate 0.125 + .25 + .25 + .0625 = 0.6875; other 0.375.
    # -A: 0.4375 (rank 1); -A-B: 0.1875 (flip); -B alone or -A alone: 0.4375 (no flip).
    scorer, case = cf_setup([0.25, 0.25, 0.0625], [("other", 0.375)])
    result = find_counterfactual(scorer, case, compose, np.array([0.3, 0.2, 0.1]))
    assert result["found"] and result["verified"]
    assert result["removed"] == ["id_A", "id_B"]
    assert result["removed_titles"] == ["A", "B"]
    # The reported outcome is the measured one of the final set, not of a failed prune trial.
    assert result["score_after"] == 0.1875 and result["rank_after"] == 2
    assert result["tried"] == 1 + 2 + 2
    assert_minimal(scorer, case, result["removed_indices"])


def test_counterfactual_pruning_after_three_greedy_steps():
    # A 0, B .25, C .25, D .0625: 0.6875; other 0.375. Greedy removes A, B, C (0.1875);
    # pruning drops A ({B, C} 0.1875 flips), keeps B and C (alone: 0.4375).
    scorer, case = cf_setup([0.0, 0.25, 0.25, 0.0625], [("other", 0.375)])
    result = find_counterfactual(scorer, case, compose, np.array([0.4, 0.3, 0.2, 0.1]))
    assert result["found"] and result["removed_indices"] == [1, 2]
    assert result["removed"] == ["id_B", "id_C"]
    assert result["score_after"] == 0.1875 and result["rank_after"] == 2
    assert result["tried"] == 1 + 3 + 3
    assert_minimal(scorer, case, result["removed_indices"])


def test_counterfactual_not_found_within_max_removed():
    # A, B, C .0625 each, D .25: 0.5625; other 0.25. Removing A, B, C leaves 0.375.
    scorer, case = cf_setup([0.0625, 0.0625, 0.0625, 0.25], [("other", 0.25)])
    attributions = np.array([0.4, 0.3, 0.2, 0.1])
    result = find_counterfactual(scorer, case, compose, attributions, max_removed=3)
    assert result["found"] is False and result["verified"] is False
    assert "removed" not in result and "score_after" not in result
    assert result["tried"] == 1 + 3
    assert result["score_before"] == 0.5625 and result["rank_before"] == 1

    # Allowing a fourth removal finds a flip; pruning then reduces {A, B, C, D} to {C, D}:
    # -B-C-D 0.1875 flips, -C-D 0.25 ties "other" (flips), -D 0.3125 and -C 0.5 do not.
    result = find_counterfactual(scorer, case, compose, attributions, max_removed=4)
    assert result["found"] and result["removed_indices"] == [2, 3]
    assert result["score_after"] == 0.25 and result["rank_after"] == 2
    assert result["tried"] == 1 + 4 + 4
    assert_minimal(scorer, case, result["removed_indices"])


def test_counterfactual_only_positive_attributions_are_tried():
    # Removing A would flip, but its attribution is 0; C (positive) does not flip.
    scorer, case = cf_setup([0.25, 0.0, 0.0], [("other", 0.25)])
    result = find_counterfactual(scorer, case, compose, np.array([0.0, -0.5, 0.1]))
    assert result["found"] is False
    assert result["tried"] == 2


def test_counterfactual_already_flipped():
    scorer, case = cf_setup([0.125], [("other", 0.5)])
    result = find_counterfactual(scorer, case, compose, np.array([0.1]))
    assert result["found"] is False and result["rank_before"] == 2
    assert "note" in result and result["tried"] == 1


def test_counterfactual_top_k():
    # 0.5 with others 0.4375, 0.375: rank 1; without A 0.25 -> rank 3 > 2.
    scorer, case = cf_setup([0.25, 0.125], [("x", 0.4375), ("y", 0.375)])
    result = find_counterfactual(scorer, case, compose, np.array([0.2, 0.1]), top_k=2)
    assert result["criterion"] == "leaves the top 2 of its impression"
    assert result["found"] and result["removed_indices"] == [0] and result["rank_after"] == 3


def test_counterfactual_threshold_without_other_candidates():
    # No other candidates: threshold 0.5. Full 0.125 + .25 + .125 = 0.5 (not below);
    # without A: 0.25 < 0.5.
    scorer, case = cf_setup([0.25, 0.125], [])
    result = find_counterfactual(scorer, case, compose, np.array([0.3, 0.1]))
    assert result["criterion"] == "score falls below 0.5"
    assert result["impression_size"] == 1
    assert result["found"] and result["verified"]
    assert result["removed"] == ["id_A"]
    assert result["score_after"] == 0.25 and result["rank_after"] == 1
    assert all(items == ["candidate"] for _, items in scorer.calls)


def test_counterfactual_explicit_threshold_with_other_candidates():
    # The candidate stays first (other 0.0625) but falls below 0.3 without A.
    scorer, case = cf_setup([0.25, 0.125], [("other", 0.0625)])
    result = find_counterfactual(scorer, case, compose, np.array([0.3, 0.1]), threshold=0.3)
    assert result["criterion"] == "score falls below 0.3"
    assert result["impression_size"] == 2
    assert result["found"] and result["removed_indices"] == [0]
    assert result["score_after"] == 0.25 and result["rank_after"] == 1
    # Already below the threshold with the full history.
    result = find_counterfactual(scorer, case, compose, np.array([0.3, 0.1]), threshold=0.75)
    assert result["found"] is False and "note" in result
