"""Catalogue retrieval: top-k over a run's item index, and the fusion of two stages.

After a retrieving run trains, every catalogue item's vector is computed once from the item
tower (``ModelKind.item_index``) and saved under ``<model_dir>/item_index/``
(trainer/kinds/item_index.py). Retrieval scores a user's state against all of them with
the model's own ``score_matrix`` and keeps the top k, excluding the items the user has
already seen (:func:`top_k`; the ``recommend`` command is trainer/serving/recommend_lib.py).

keras-rs' ``BruteForceRetrieval`` is not used: it scores one query vector by one dot
product per candidate, while this model's logit adds the best match over the user's parts
(``max_interest``) and a per-item bias, and it fixes k when the layer is built.
"""

from __future__ import annotations

import numpy as np

from trainer.errors import UserInputError

def top_k(scores: np.ndarray, k: int, exclude=None) -> tuple:
    """The ``k`` best columns of each row of ``scores`` ``[b, N]``, best first:
    ``(positions [b, k], scores [b, k])``. ``exclude`` is one collection of column positions
    per row that may not be returned (seen items). Ties keep the lower position first."""
    scores = np.asarray(scores, np.float64)
    num = scores.shape[1]
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise UserInputError(f"k must be a positive integer, got {k!r}")
    masked = scores.copy()
    for row, positions in enumerate(exclude or []):
        positions = list(positions)
        if positions:
            masked[row, positions] = -np.inf
        available = num - len(set(positions))
        if k > available:
            raise UserInputError(f"k={k} exceeds the {available} catalogue items that row "
                                 f"{row} has not seen (catalogue of {num})")
    if k > num:
        raise UserInputError(f"k={k} exceeds the catalogue's {num} items")
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(masked, order, axis=1)


def fuse_and_rank(candidates: np.ndarray, retrieval_logits: np.ndarray,
                  rerank_logits: np.ndarray, k: int, retrieval_weight: float = 0.0) -> tuple:
    """The reranking stage's order over a retrieval stage's candidates.

    Each row's score is ``rerank_logits + retrieval_weight * retrieval_logits`` (all
    ``[users, n]``, aligned with ``candidates``); returns ``(candidates [users, k],
    scores [users, k], order [users, k])``, best first, where ``order`` indexes the
    original n columns. Ties keep the retrieval order (the sort is stable)."""
    candidates = np.asarray(candidates)
    scores = (np.asarray(rerank_logits, np.float64)
              + retrieval_weight * np.asarray(retrieval_logits, np.float64))
    if scores.shape != candidates.shape:
        raise ValueError(f"logits {scores.shape} and candidates {candidates.shape} differ")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= candidates.shape[1]:
        raise UserInputError(f"k must be in [1, {candidates.shape[1]}] (the retrieved "
                             f"candidates), got {k!r}")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (np.take_along_axis(candidates, order, axis=1),
            np.take_along_axis(scores, order, axis=1), order)
