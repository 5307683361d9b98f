"""Counterfactual explanations over history items, verified by re-scoring.

The question is "which past clicks, had they not happened, would have changed the
recommendation?". Removing history items changes the user side for *every* candidate of the
impression, so each trial re-scores the whole impression with the reduced history. The
search is greedy along the attribution order (largest positive contribution first), then
pruned: an item is dropped from the found set if the rest still flips the outcome. The set
returned is the one whose effect was measured; nothing is extrapolated.
"""

from __future__ import annotations

import numpy as np

from bert_recommender.explainability.history_attributions import Case, ComposeUserText, subset_scores
from bert_recommender.explainability.pair_scorer import PairScorer


def rank_of_first(scores: np.ndarray) -> int:
    """1-based rank of ``scores[0]`` among ``scores`` (ties count against it)."""
    return int(1 + np.sum(scores[1:] >= scores[0]))


def find_counterfactual(scorer: PairScorer, case: Case, compose: ComposeUserText,
                        attributions: np.ndarray, top_k: int = 1,
                        threshold: float | None = None, max_removed: int = 3) -> dict:
    """The smallest set (greedy, then pruned) of history items whose removal drops the
    candidate out of its impression's top-``top_k``, or below ``threshold`` when given
    (also used when the impression has no other candidates).

    Returns ``{"found", "criterion", "removed", "removed_titles", "score_before",
    "score_after", "rank_before", "rank_after", "tried", "verified"}``: ``tried`` counts the
    re-scored subsets; ``verified`` is True only for a set whose outcome was measured.
    """
    n = len(case.history)
    items = [case.candidate_text] + [text for _, text in case.others]
    use_threshold = threshold is not None or not case.others
    if use_threshold and threshold is None:
        threshold = 0.5
    criterion = (f"score falls below {threshold:g}" if use_threshold
                 else f"leaves the top {top_k} of its impression")

    def outcome(keep):
        scores = subset_scores(scorer, case, compose, keep[None], items)[0]
        return scores[0], rank_of_first(scores)

    def flipped(score, rank):
        return score < threshold if use_threshold else rank > top_k

    full = np.ones(n, dtype=bool)
    score_before, rank_before = outcome(full)
    result = {"found": False, "criterion": criterion, "score_before": float(score_before),
              "rank_before": rank_before, "impression_size": len(items), "tried": 1,
              "verified": False}
    if flipped(score_before, rank_before):
        result["note"] = "the outcome already holds with the full history"
        return result
    order = [int(i) for i in np.argsort(-np.asarray(attributions), kind="stable")
             if attributions[i] > 0][:max_removed]
    removed = []
    for item in order:
        removed.append(item)
        keep = full.copy()
        keep[removed] = False
        score, rank = outcome(keep)
        result["tried"] += 1
        if flipped(score, rank):
            break
    else:
        return result
    # Prune: drop members the flip does not need (each check is a measured re-score).
    for item in list(removed):
        if len(removed) == 1:
            break
        trial = [r for r in removed if r != item]
        keep = full.copy()
        keep[trial] = False
        trial_score, trial_rank = outcome(keep)
        result["tried"] += 1
        if flipped(trial_score, trial_rank):
            removed, score, rank = trial, trial_score, trial_rank
    result.update({
        "found": True, "verified": True,
        "removed": [case.history[i][0] for i in removed],
        "removed_titles": [case.history[i][1] for i in removed],
        "removed_indices": sorted(removed),
        "score_after": float(score), "rank_after": int(rank)})
    return result
