"""Catalogue retrieval: top-k over a run's item index, exact or approximate, and the fusion
of two stages.

After a retrieving run trains, every catalogue item's vector is computed once from the item
tower (``ModelKind.item_index``) and saved under ``<model_dir>/item_index/``
(trainer/kinds/item_index.py). The model's logit is a maximum of inner products
(``TwoTowerRecommender.retrieval_vectors`` / ``retrieval_queries``: the best of ``user +
interest_k`` against ``[item vector, item bias]``), so retrieval scores every item with one
matrix product per query (:func:`catalogue_scores`) and keeps the top k, excluding the
items the user has already seen (:func:`top_k`). For large catalogues
:class:`ApproximateIndex` (faiss HNSW) proposes candidates for each query and rescores
them exactly. The ``recommend`` command is trainer/serving/recommend_lib.py.

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
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
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
    if 4 * k >= num:
        order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(masked, order, axis=1)
    # A large catalogue: partition, then sort only each row's items at or above its k-th
    # best score (all of them, so ties at the boundary keep the lower position first).
    threshold = np.partition(masked, num - k, axis=1)[:, num - k]
    order = np.empty((len(masked), k), np.int64)
    for row, scores_row in enumerate(masked):
        best = np.flatnonzero(scores_row >= threshold[row])
        order[row] = best[np.argsort(-scores_row[best], kind="stable")[:k]]
    return order, np.take_along_axis(masked, order, axis=1)


def catalogue_scores(queries: np.ndarray, present: np.ndarray, vectors: np.ndarray,
                     offset: float = 0.0) -> np.ndarray:
    """Every user's logit against every catalogue item, ``[b, N]`` float32: the best
    present query's inner product (``queries [b, K, d']``, ``present [b, K]``, ``vectors
    [N, d']``, as ``TwoTowerRecommender.retrieval_queries`` / ``retrieval_vectors`` give
    them) plus ``offset`` (the model's global bias). Each query slot is one matrix product
    over the users that have it, so absent parts cost nothing."""
    queries = np.asarray(queries, np.float32)
    present = np.asarray(present, bool)
    vectors = np.asarray(vectors, np.float32)
    scores = np.full((queries.shape[0], vectors.shape[0]), -np.inf, np.float32)
    for slot in range(queries.shape[1]):
        rows = np.flatnonzero(present[:, slot])
        if len(rows) == len(scores):
            np.maximum(scores, queries[:, slot] @ vectors.T, out=scores)
        elif len(rows):
            scores[rows] = np.maximum(scores[rows], queries[rows, slot] @ vectors.T)
    return scores + np.float32(offset)


class ApproximateIndex:
    """An approximate maximum-inner-product index over a catalogue's retrieval vectors
    (``[N, d']``, ``TwoTowerRecommender.retrieval_vectors``): faiss' HNSW graph proposes
    ``candidates`` items for each present query of a user, and the union is rescored
    exactly with the model's logit (the best query's inner product), so every returned
    score is the model's and only the recall of the proposals is approximate.

    The graph is built on the inner product itself (faiss' ``METRIC_INNER_PRODUCT``).
    Measured on 100,000 synthetic items (``benchmarks/retrieve_latency``): recall@100
    0.995 at efSearch 512, against 0.970 for the usual reduction to a Euclidean search
    (one more coordinate ``sqrt(max_norm^2 - |x|^2)`` per item) with the same settings.
    faiss-cpu is an optional dependency
    (``pip install -e .[ann]``); it is imported only here.

    Args:
      vectors: ``[N, d']`` float32, the index's items in position order.
      neighbours: HNSW's M (graph degree); ``ef_construction`` its build-time beam.
      ef_search: the search beam (at least ``candidates``; raised to it when lower).
      candidates: items proposed per query before the exact rescoring.
      storage: how the graph stores the vectors it walks: ``flat`` (float32), ``fp16`` or
        ``sq8`` (faiss' scalar quantizer, 1 byte a coordinate). The graph search is bound
        by fetching vectors from memory; a smaller copy costs less per step, and the exact
        rescoring reads the float32 vectors, so only which items are proposed changes.
      screen_ef: > 0 searches in two passes. A user's logit for an item is the best of its
        queries, so a query whose best inner product is below the user's k-th best logit
        adds nothing to the top k. The first pass runs every query with this narrow beam;
        the k-th best exact logit of the union it proposes is a lower bound of the true
        k-th; only the queries whose best logit over that union reaches it get the full
        beam. A user's queries often point at different parts of the catalogue and only
        some of them hold its top k, so the full beam runs for fewer queries. The price: a
        query is spared wrongly when the narrow pass missed its items that reach the bound.
        ``screened_queries`` counts the queries the last search spared.
    """

    STORAGE = ("flat", "fp16", "sq8")

    def __init__(self, vectors: np.ndarray, neighbours: int = 32, ef_construction: int = 200,
                 ef_search: int = 512, candidates: int = 128, storage: str = "flat",
                 screen_ef: int = 0):
        try:
            import faiss  # pylint: disable=import-outside-toplevel  # optional extra
        except ImportError as error:
            raise UserInputError("the approximate index needs faiss-cpu: pip install -e "
                                 "'.[ann]' (or pip install faiss-cpu==1.15.1)") from error
        if storage not in self.STORAGE:
            raise UserInputError(f"storage must be one of {', '.join(self.STORAGE)}, got "
                                 f"{storage!r}")
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        dimension = self.vectors.shape[1]
        if storage == "flat":
            self.index = faiss.IndexHNSWFlat(dimension, neighbours, faiss.METRIC_INNER_PRODUCT)
        else:
            quantizer = {"fp16": faiss.ScalarQuantizer.QT_fp16,
                         "sq8": faiss.ScalarQuantizer.QT_8bit}[storage]
            self.index = faiss.IndexHNSWSQ(dimension, quantizer, neighbours,
                                           faiss.METRIC_INNER_PRODUCT)
            self.index.train(self.vectors)  # each coordinate's range, for the 8-bit codes
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(self.vectors)
        self.neighbours, self.ef_construction = neighbours, ef_construction
        self.storage = storage
        self.candidates = candidates
        self.ef_search = ef_search
        self.screen_ef = screen_ef
        self.screened_queries = 0

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, present: np.ndarray, k: int, offset: float = 0.0,
               exclude=None) -> tuple:
        """``(positions [b, k], logits [b, k])`` as :func:`top_k` over
        :func:`catalogue_scores` returns them, but over each user's proposed candidates
        only (``exclude``: positions per user never returned, as in :func:`top_k`)."""
        queries = np.asarray(queries, np.float32)
        present = np.asarray(present, bool)
        width = max(self.candidates, k + max((len(e) for e in exclude or []), default=0))
        rows, slots = np.nonzero(present)
        flat = np.ascontiguousarray(queries[rows, slots])

        def unseen(proposals, user):
            found = np.unique(proposals)
            found = found[found >= 0]
            if exclude is not None and len(exclude[user]):
                found = np.setdiff1d(found, np.asarray(list(exclude[user]), np.int64))
            return found

        full = np.ones(len(rows), bool)  # the queries that get the full beam
        first = np.full((len(rows), 0), -1, np.int64)
        if self.screen_ef > 0:
            first = self._propose(flat, self.screen_ef, self.screen_ef)
            for user in range(len(queries)):
                mine = np.flatnonzero(rows == user)
                found = unseen(first[mine], user)
                if len(mine) < 2 or len(found) < k:
                    continue  # nothing to spare, or no bound yet: every query searches
                best = flat[mine] @ self.vectors[found].T  # [queries, found]
                kth = np.partition(best.max(axis=0), len(found) - k)[len(found) - k]
                full[mine] = best.max(axis=1) >= kth
        self.screened_queries = int((~full).sum())
        second = np.full((len(rows), width), -1, np.int64)
        second[full] = self._propose(flat[full], width, self.ef_search)
        proposed = np.concatenate([first, second], axis=1)
        positions = np.empty((len(queries), k), np.int64)
        logits = np.empty((len(queries), k), np.float32)
        for user in range(len(queries)):
            found = unseen(proposed[rows == user], user)
            if len(found) < k:
                raise UserInputError(f"the approximate index proposed {len(found)} unseen "
                                     f"items for row {user}, fewer than k={k}: raise "
                                     "candidates")
            user_queries = queries[user, present[user]]
            scores = (user_queries @ self.vectors[found].T).max(axis=0) + np.float32(offset)
            order = np.argsort(-scores, kind="stable")[:k]
            positions[user], logits[user] = found[order], scores[order]
        return positions, logits

    def _propose(self, flat_queries: np.ndarray, width: int, ef_search: int) -> np.ndarray:
        """The graph's ``width`` proposals ``[q, width]`` (-1 pads) for each query row."""
        if not len(flat_queries):
            return np.empty((0, width), np.int64)
        self.index.hnsw.efSearch = max(ef_search, width)
        return self.index.search(flat_queries, width)[1]


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
