"""Which past clicks drove a score: leave-one-out and sampled Shapley values over history items.

A :class:`Case` holds one impression's candidate with the user's *shown* history (the items
the user side was built from). The value of a subset S of history items is the click
probability with the user side rebuilt from S alone (order kept, the query kept), so
removing an item never lets an older, previously hidden item slide into view.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import numpy as np

from bert_recommender.explainability.pair_scorer import PairScorer

# compose(query, titles oldest first) -> user side text; the run's own formatting
# (trainer.data.input_pipeline.user_side_text with the run's max_history).
ComposeUserText = Callable[[str, list], str]


@dataclasses.dataclass
class Case:
    """One candidate to explain, in its impression.

    ``history`` lists ``(item_id, title)`` oldest first, only the items the model saw;
    ``others`` are the impression's other candidates as ``(item_id, item_text)``, needed to
    rank the candidate and to verify counterfactuals.
    """

    query: str
    history: list
    candidate_id: str
    candidate_text: str
    candidate_title: str
    others: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)  # ids, label, truth: copied to records
    # What the model reads for each history item when that is more than its title (a
    # two-tower model encodes the item's full text); None: the titles.
    history_texts: list | None = None

    def history_model_texts(self) -> list:
        """Each history item as the model reads it (oldest first)."""
        if self.history_texts is not None:
            return list(self.history_texts)
        return [title for _, title in self.history]

    def user_text(self, compose: ComposeUserText, keep: np.ndarray | None = None) -> str:
        """The user side with only the history items flagged in ``keep``."""
        texts = [text for i, text in enumerate(self.history_model_texts())
                 if keep is None or keep[i]]
        return compose(self.query, texts)


def subset_scores(scorer: PairScorer, case: Case, compose: ComposeUserText,
                  keeps: np.ndarray, item_texts: list | None = None) -> np.ndarray:
    """Probabilities with each history subset (rows of bool ``keeps``), for the candidate
    or, with ``item_texts``, for each of those items: ``[len(keeps), len(item_texts)]``."""
    keeps = np.atleast_2d(keeps)
    items = [case.candidate_text] if item_texts is None else list(item_texts)
    users = [case.user_text(compose, keep) for keep in keeps]
    scores = scorer.score_texts([u for u in users for _ in items],
                                [it for _ in users for it in items])
    scores = scores.reshape(len(users), len(items))
    return scores[:, 0] if item_texts is None else scores


def leave_one_out(scorer: PairScorer, case: Case, compose: ComposeUserText) -> np.ndarray:
    """f(all history) - f(history without item i), for each history item (oldest first)."""
    n = len(case.history)
    if n == 0:
        return np.zeros([0])
    keeps = np.vstack([np.ones(n, dtype=bool), ~np.eye(n, dtype=bool)])
    scores = subset_scores(scorer, case, compose, keeps)
    return scores[0] - scores[1:]


def _shapley_from_permutations(values: dict, permutations: np.ndarray, n: int) -> np.ndarray:
    phi = np.zeros(n)
    for order in permutations:
        keep = np.zeros(n, dtype=bool)
        before = values[keep.tobytes()]
        for item in order:
            keep[item] = True
            after = values[keep.tobytes()]
            phi[item] += after - before
            before = after
    return phi / len(permutations)


def sampled_shapley(scorer: PairScorer, case: Case, compose: ComposeUserText,
                    num_permutations: int = 32, seed: int = 0) -> tuple[np.ndarray, int]:
    """Shapley values of the history items by permutation sampling (Castro et al., 2009).

    Permutations come in antithetic pairs (an order and its reverse), which cancels much of
    the sampling noise; every distinct subset is scored once, in one batch. The values sum
    exactly to f(all history) - f(no history). Returns ``(values oldest first,
    permutations used)``.
    """
    n = len(case.history)
    if n == 0:
        return np.zeros([0]), 0
    rng = np.random.default_rng(seed)
    half = max(1, num_permutations // 2)
    forward = np.array([rng.permutation(n) for _ in range(half)])
    permutations = np.concatenate([forward, forward[:, ::-1]])
    subsets = {}
    for order in permutations:
        keep = np.zeros(n, dtype=bool)
        subsets[keep.tobytes()] = keep.copy()
        for item in order:
            keep[item] = True
            subsets[keep.tobytes()] = keep.copy()
    keys = list(subsets)
    scores = subset_scores(scorer, case, compose, np.array([subsets[k] for k in keys]))
    values = dict(zip(keys, scores))
    return _shapley_from_permutations(values, permutations, n), len(permutations)


def exact_shapley(value: Callable[[np.ndarray], float], n: int) -> np.ndarray:
    """Exact Shapley values of a set function over ``n`` players (2^n evaluations; for
    tests and tiny histories)."""
    values = {}
    for bits in itertools.product([False, True], repeat=n):
        keep = np.array(bits, dtype=bool)
        values[keep.tobytes()] = value(keep)
    return _shapley_from_permutations(values, np.array(list(itertools.permutations(range(n)))),
                                      n)
