"""Catalogue retrieval: top-k over a run's item index, exact or approximate, and the fusion
of two stages.

After a retrieving run trains, every catalogue item's vector is computed once from the item
tower (``ModelKind.item_index``) and saved under ``<model_dir>/item_index/``
(trainer/kinds/item_index.py). The model's logit is a maximum of inner products
(``TwoTowerRecommender.retrieval_vectors`` / ``retrieval_queries``: the best of ``user +
interest_k`` against ``[item vector, item bias]``), so retrieval scores every item with
matrix products over all queries, a tile of items at a time (:func:`catalogue_scores`),
and keeps the top k, excluding the items the user has already seen (:func:`top_k`). For
large catalogues :class:`ApproximateIndex` (an HNSW graph built by faiss, searched under
the user's own logit) proposes candidates for each user and rescores them exactly. The
``recommend`` command is trainer/serving/recommend_lib.py.

keras-rs' ``BruteForceRetrieval`` is not used: it scores one query vector by one dot
product per candidate, while this model's logit adds the best match over the user's parts
(``max_interest``) and a per-item bias, and it fixes k when the layer is built.
"""

from __future__ import annotations

import hashlib
import os
import warnings

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


# The most scores ([users x query slots, items]) catalogue_scores takes from one matrix
# product: a tile of items small enough to stay in cache while its maximum over slots is
# taken. At 256 users x 1M items x 7 slots: 2.3 s, against 9.7 s for one product per slot
# over the users that have it (scratch timing on a 2-core Xeon).
TILE_SCORES = 1 << 20


def catalogue_scores(queries: np.ndarray, present: np.ndarray, vectors: np.ndarray,
                     offset: float = 0.0) -> np.ndarray:
    """Every user's logit against every catalogue item, ``[b, N]`` float32: the best
    present query's inner product (``queries [b, K, d']``, ``present [b, K]``, ``vectors
    [N, d']``, as ``TwoTowerRecommender.retrieval_queries`` / ``retrieval_vectors`` give
    them) plus ``offset`` (the model's global bias); -inf for a user with no query present.
    One product per tile of items over every slot; an absent slot repeats the user's
    first present query, which leaves the maximum as it is."""
    queries = np.asarray(queries, np.float32)
    present = np.asarray(present, bool)
    vectors = np.asarray(vectors, np.float32)
    users, slots, dim = queries.shape
    first_present = queries[np.arange(users), present.argmax(axis=1)]
    rows = np.where(present[..., None], queries, first_present[:, None]).reshape(-1, dim)
    scores = np.empty((users, len(vectors)), np.float32)
    step = max(TILE_SCORES // max(len(rows), 1), 256)
    for start in range(0, len(vectors), step):
        tile = rows @ vectors[start:start + step].T
        np.max(tile.reshape(users, slots, -1), axis=1, out=scores[:, start:start + step])
    scores += np.float32(offset)
    scores[~present.any(axis=1)] = -np.inf
    return scores


class ApproximateIndex:
    """An approximate maximum-inner-product index over a catalogue's retrieval vectors
    (``[N, d']``, ``TwoTowerRecommender.retrieval_vectors``): faiss builds an HNSW graph
    over them, a search proposes items for each user, and the proposals are rescored
    exactly with the model's logit (the best query's inner product), so every returned
    score is the model's and only the recall of the proposals is approximate.

    The graph is built on the inner product itself (faiss' ``METRIC_INNER_PRODUCT``).
    Measured on 100,000 synthetic items (``benchmarks/retrieve_latency``): recall@100
    0.995 at efSearch 512, against 0.970 for the usual reduction to a Euclidean search
    (one more coordinate ``sqrt(max_norm^2 - |x|^2)`` per item) with the same settings.
    faiss-cpu and numba are optional dependencies (``pip install -e .[ann]``); they are
    imported only here.

    Args:
      vectors: ``[N, d']`` float32, the index's items in position order.
      neighbours: HNSW's M (graph degree); ``ef_construction`` its build-time beam.
      ef_search: the search beam (at least k; for ``per_query`` at least ``candidates``).
      candidates: ``per_query`` only: items faiss proposes per query.
      storage: how the graph stores the vectors: ``flat`` (float32), ``fp16`` or ``sq8``
        (faiss' scalar quantizer, 1 byte a coordinate). Only faiss' own walks read that
        copy (the build, and ``per_query`` searches); the ``joint`` search and the exact
        rescoring read the float32 vectors.
      search: ``joint`` (default) walks the graph once per user, ranking its beam by the
        user's logit (the best of its queries; trainer/serving/graph_search.py, numba), so
        a query whose items cannot reach the top k stops costing anything as soon as the
        beam is better. ``per_query`` runs faiss' search once per query (``candidates``
        each) and rescores the union.
      cache_dir: a local folder for the graph (the build takes minutes at a million
        items): read from ``cache_dir/hnsw-M<M>-efc<ef>-<storage>-<fingerprint>.faiss``
        when a graph of the same vectors and build settings was saved there, else built
        and saved there atomically (a warning, not an error, when it cannot be written).
        ``loaded`` says which happened.
    """

    STORAGE = ("flat", "fp16", "sq8")
    SEARCHES = ("joint", "per_query")
    # The defaults every caller shares (recommend_lib.Recommender's included).
    NEIGHBOURS = 32
    EF_SEARCH = 512

    def __init__(self, vectors: np.ndarray, neighbours: int = NEIGHBOURS,
                 ef_construction: int = 200, ef_search: int = EF_SEARCH,
                 candidates: int = 128, storage: str = "flat",
                 search: str = "joint", cache_dir: str | None = None):
        try:
            import faiss  # pylint: disable=import-outside-toplevel  # optional extra
        except ImportError as error:
            raise UserInputError("the approximate index needs faiss-cpu: pip install -e "
                                 "'.[ann]' (or pip install faiss-cpu==1.15.1)") from error
        if storage not in self.STORAGE:
            raise UserInputError(f"storage must be one of {', '.join(self.STORAGE)}, got "
                                 f"{storage!r}")
        if search not in self.SEARCHES:
            raise UserInputError(f"search must be one of {', '.join(self.SEARCHES)}, got "
                                 f"{search!r}")
        if search == "joint":
            self._require_numba()
        for name, value in (("neighbours", neighbours), ("ef_construction", ef_construction),
                            ("ef_search", ef_search), ("candidates", candidates)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise UserInputError(f"{name} must be a positive integer, got {value!r}")
        self.vectors = np.ascontiguousarray(vectors, np.float32)
        self.neighbours, self.ef_construction = neighbours, ef_construction
        self.storage = storage
        self.graph_file = (None if cache_dir is None else
                           os.path.join(cache_dir, self._graph_name(faiss.__version__)))
        self.index = self._read_graph(faiss)
        self.loaded = self.index is not None
        if not self.loaded:
            self.index = self._build_graph(faiss)
            self._write_graph(faiss)
        self.candidates = candidates
        self.ef_search = ef_search
        self.search_mode = search
        self._graph = None

    def __len__(self) -> int:
        return len(self.vectors)

    def _build_graph(self, faiss):
        dimension = self.vectors.shape[1]
        if self.storage == "flat":
            index = faiss.IndexHNSWFlat(dimension, self.neighbours, faiss.METRIC_INNER_PRODUCT)
        else:
            quantizer = {"fp16": faiss.ScalarQuantizer.QT_fp16,
                         "sq8": faiss.ScalarQuantizer.QT_8bit}[self.storage]
            index = faiss.IndexHNSWSQ(dimension, quantizer, self.neighbours,
                                      faiss.METRIC_INNER_PRODUCT)
            index.train(self.vectors)  # each coordinate's range, for the 8-bit codes
        index.hnsw.efConstruction = self.ef_construction
        index.add(self.vectors)
        return index

    def _graph_name(self, faiss_version: str) -> str:
        """The cache file's name: the build settings and a fingerprint of the vectors
        (and faiss' version), so a graph is only ever read back for what built it."""
        fingerprint = hashlib.blake2b(digest_size=8)
        fingerprint.update(f"{self.vectors.shape} {faiss_version}".encode())
        fingerprint.update(self.vectors.tobytes())
        return (f"hnsw-M{self.neighbours}-efc{self.ef_construction}-{self.storage}-"
                f"{fingerprint.hexdigest()}.faiss")

    def _read_graph(self, faiss):
        if self.graph_file is None or not os.path.exists(self.graph_file):
            return None
        try:
            index = faiss.read_index(self.graph_file)
        except RuntimeError as error:  # a damaged file: built again and replaced
            warnings.warn(f"could not read the cached graph {self.graph_file} ({error}); "
                          "building it again")
            return None
        if index.ntotal != len(self.vectors) or index.d != self.vectors.shape[1]:
            warnings.warn(f"the cached graph {self.graph_file} holds {index.ntotal} x "
                          f"{index.d} vectors, not {self.vectors.shape}; building it again")
            return None
        return index

    def _write_graph(self, faiss) -> None:
        """Writes the graph next to its final name, then renames it: a reader never sees
        half a file, and nothing is left behind when the write fails."""
        if self.graph_file is None:
            return
        partial = f"{self.graph_file}.partial-{os.getpid()}"
        try:
            os.makedirs(os.path.dirname(self.graph_file), exist_ok=True)
            faiss.write_index(self.index, partial)
            os.replace(partial, self.graph_file)
        except (OSError, RuntimeError) as error:
            warnings.warn(f"could not save the graph to {self.graph_file} ({error}); it "
                          "will be built again next time")
            if os.path.exists(partial):
                os.remove(partial)

    @staticmethod
    def _require_numba():
        from trainer.serving import graph_search  # pylint: disable=import-outside-toplevel
        if not graph_search.COMPILED:
            raise UserInputError("the joint search needs numba: pip install -e '.[ann]' (or "
                                 "pip install numba==0.68.1), or use search='per_query'")
        return graph_search

    @property
    def graph(self):
        """The joint search's view of the graph (graph_search.JointGraphSearch: its
        neighbour lists and an 8-bit copy of the vectors), made on the first joint search."""
        if self._graph is None:
            self._graph = self._require_numba().JointGraphSearch(self.index.hnsw,
                                                                  self.vectors)
        return self._graph

    def search(self, queries: np.ndarray, present: np.ndarray, k: int, offset: float = 0.0,
               exclude=None) -> tuple:
        """``(positions [b, k], logits [b, k])`` as :func:`top_k` over
        :func:`catalogue_scores` returns them, but over each user's proposed items only
        (``exclude``: positions per user never returned, as in :func:`top_k`)."""
        queries = np.asarray(queries, np.float32)
        present = np.asarray(present, bool)
        seen = [np.asarray(list(exclude[user]) if exclude is not None else [], np.int64)
                for user in range(len(queries))]
        if self.search_mode == "joint":
            proposed = [self.graph.search(queries[user, present[user]],
                                          max(self.ef_search, k), seen[user])
                        for user in range(len(queries))]
        else:
            width = max(self.candidates, k + max((len(s) for s in seen), default=0))
            rows, slots = np.nonzero(present)
            self.index.hnsw.efSearch = max(self.ef_search, width)
            flat = np.ascontiguousarray(queries[rows, slots])
            found = (self.index.search(flat, width)[1] if len(flat)
                     else np.empty((0, width), np.int64))
            proposed = [found[rows == user].ravel() for user in range(len(queries))]
        positions = np.empty((len(queries), k), np.int64)
        logits = np.empty((len(queries), k), np.float32)
        for user in range(len(queries)):
            found = np.unique(proposed[user])
            found = np.setdiff1d(found[found >= 0], seen[user])
            if len(found) < k:
                raise UserInputError(f"the approximate index proposed {len(found)} unseen "
                                     f"items for row {user}, fewer than k={k}: raise "
                                     "ef_search (and candidates)")
            user_queries = queries[user, present[user]]
            scores = (user_queries @ self.vectors[found].T).max(axis=0) + np.float32(offset)
            order = np.argsort(-scores, kind="stable")[:k]
            positions[user], logits[user] = found[order], scores[order]
        return positions, logits


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
