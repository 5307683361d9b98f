"""One beam search over an HNSW graph under a user's own logit: the best of its queries.

``retrieval.ApproximateIndex`` builds the graph with faiss (``IndexHNSWFlat``) and, by
default, searches it here rather than with faiss. faiss searches one vector at a time, so a
user with five queries (``TwoTowerRecommender.retrieval_queries``: the user and each
present interest) costs five graph searches whose proposals are then rescored, and a query
whose items cannot reach the user's top k is searched as deeply as one that holds all of
them. The model's logit for an item is the best inner product over the user's queries, and
faiss' search cannot take such a score function from Python, so this module walks faiss'
own graph (its neighbour lists, read once) with it: each query descends the graph
greedily to a local best of its own, then one beam of ``ef`` items at the bottom level,
seeded with those, is ranked by the logit itself. A query whose items score below the
beam's worst stops being expanded by itself, with no separate screening pass; the caller
rescores the beam exactly. Measured at a million items (docs/benchmarks.md, one run):
recall@100 0.992 at a batch-1 p50 of 3.4 ms on one core, where faiss' per-query search on
two cores needed 6.5 ms for the same recall.

The kernels are compiled with numba (the ``ann`` extra; shap already depends on it), on
first use and cached beside this file.
"""

from __future__ import annotations

import threading

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - the ann extra installs numba
    njit = None

COMPILED = njit is not None  # without numba ApproximateIndex refuses the joint search


def _compiled(function):
    """``function`` compiled with numba (cached, nogil); left as Python without numba, so
    importing this module never fails and the caller can say what to install."""
    if njit is None:
        return function
    return njit(cache=True, nogil=True, fastmath=True)(function)


@_compiled
def _inner(query, vectors, item):
    total = np.float32(0.0)
    for j in range(query.shape[0]):
        total += query[j] * vectors[item, j]
    return total


@_compiled
def _logit(queries, vectors, item):
    best = np.float32(-np.inf)
    for row in range(queries.shape[0]):
        score = _inner(queries[row], vectors, item)
        if score > best:
            best = score
    return best


@_compiled
def _heap_push(keys, items, size, key, item, sign):
    """Push onto a binary heap whose root holds the largest ``sign * key``."""
    position = size
    while position > 0:
        parent = (position - 1) >> 1
        if sign * keys[parent] >= sign * key:
            break
        keys[position], items[position] = keys[parent], items[parent]
        position = parent
    keys[position], items[position] = key, item
    return size + 1


@_compiled
def _heap_pop(keys, items, size, sign):
    """Drop the root of the heap :func:`_heap_push` keeps; returns the new size."""
    size -= 1
    key, item = keys[size], items[size]
    position = 0
    while True:
        child = 2 * position + 1
        if child >= size:
            break
        if child + 1 < size and sign * keys[child + 1] > sign * keys[child]:
            child += 1
        if sign * keys[child] <= sign * key:
            break
        keys[position], items[position] = keys[child], items[child]
        position = child
    keys[position], items[position] = key, item
    return size


@_compiled
def _search(queries, vectors, neighbours, offsets, level_starts, entry, top_level, beam,
            visited, blocked, stamp, frontier_keys, frontier_items, best_keys, best_items):
    """The beam search; returns how many of ``best_keys / best_items`` it filled.

    ``visited[i] == stamp`` marks items already scored, ``blocked[i] == stamp`` items that
    may be walked through but not returned (the user's seen items). The frontier is a
    max-heap of items to expand, the beam a min-heap of the ``beam`` best found."""
    frontier = 0
    found = 0
    for row in range(queries.shape[0]):
        # Each query's own greedy descent, level 0 included, seeds the beam with a local
        # best of that query: a query whose region holds some of the top k then enters
        # with an item good enough to be expanded, even when another query's items fill
        # the beam first.
        current = entry
        current_score = _inner(queries[row], vectors, current)
        for level in range(top_level, -1, -1):
            moved = True
            while moved:
                moved = False
                start = offsets[current] + level_starts[level]
                for slot in range(start, offsets[current] + level_starts[level + 1]):
                    neighbour = neighbours[slot]
                    if neighbour < 0:
                        break
                    score = _inner(queries[row], vectors, neighbour)
                    if score > current_score:
                        current, current_score, moved = neighbour, score, True
        if visited[current] != stamp:
            visited[current] = stamp
            score = _logit(queries, vectors, current)
            frontier = _heap_push(frontier_keys, frontier_items, frontier, score, current, 1.0)
            if blocked[current] != stamp:
                found = _heap_push(best_keys, best_items, found, score, current, -1.0)
    while frontier > 0:
        if found >= beam and frontier_keys[0] < best_keys[0]:
            break  # nothing left to expand can enter the beam
        item = frontier_items[0]
        frontier = _heap_pop(frontier_keys, frontier_items, frontier, 1.0)
        for slot in range(offsets[item], offsets[item] + level_starts[1]):
            neighbour = neighbours[slot]
            if neighbour < 0:
                break
            if visited[neighbour] == stamp:
                continue
            visited[neighbour] = stamp
            score = _logit(queries, vectors, neighbour)
            if found < beam or score > best_keys[0]:
                frontier = _heap_push(frontier_keys, frontier_items, frontier, score,
                                      neighbour, 1.0)
                if blocked[neighbour] != stamp:
                    found = _heap_push(best_keys, best_items, found, score, neighbour, -1.0)
                    if found > beam:
                        found = _heap_pop(best_keys, best_items, found, -1.0)
    return found


class JointGraphSearch:
    """faiss' HNSW graph (``index.hnsw`` of an ``IndexHNSW*``) searched under the best of a
    user's queries against ``vectors`` (``[N, d]`` float32, the graph's items in order), as
    scored on an 8-bit copy of them.

    One instance keeps one scratch state (visited marks), so calls are serialised."""

    def __init__(self, hnsw, vectors: np.ndarray):
        import faiss  # pylint: disable=import-outside-toplevel  # optional extra

        self.neighbours = faiss.vector_to_array(hnsw.neighbors).astype(np.int32)
        self.offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
        self.level_starts = faiss.vector_to_array(hnsw.cum_nneighbor_per_level).astype(np.int64)
        self.entry, self.top_level = int(hnsw.entry_point), int(hnsw.max_level)
        # The walk scores an 8-bit copy of the vectors (each coordinate's range in 256
        # steps; 66 bytes an item instead of 260): it waits on memory, so a quarter of the
        # bytes per item took about a third off its time (at a million items, one scratch
        # run after the other: p50 3.8 against 5.4 ms at the same beam, recall@100 0.992
        # both ways). Only which items reach the beam can change: the caller rescores
        # them with the float32 vectors.
        vectors = np.asarray(vectors, np.float32)
        self._low = vectors.min(axis=0) if len(vectors) else np.zeros(vectors.shape[1])
        spread = (vectors.max(axis=0) - self._low) if len(vectors) else self._low
        self._step = np.where(spread > 0, spread / 255.0, 1.0).astype(np.float32)
        codes = np.rint((vectors - self._low) / self._step) - 128.0
        # A last column of ones carries each query's constant term (below).
        self.codes = np.ascontiguousarray(np.concatenate(
            [codes, np.ones((len(vectors), 1))], axis=1).astype(np.int8))
        self._visited = np.zeros(len(vectors), np.int32)
        self._blocked = np.zeros(len(vectors), np.int32)
        # Each item enters the frontier at most once (it is marked visited first).
        self._frontier_keys = np.empty(len(vectors), np.float32)
        self._frontier_items = np.empty(len(vectors), np.int64)
        self._stamp = 0
        self._lock = threading.Lock()

    def search(self, queries: np.ndarray, beam: int, blocked=()) -> np.ndarray:
        """The positions in the final beam (at most ``beam``, unordered) for one user's
        ``queries`` ``[q, d]``; ``blocked`` positions are walked through, never returned."""
        queries = np.asarray(queries, np.float32)
        if not len(queries) or self.entry < 0:
            return np.empty(0, np.int64)
        # q . x ~ q . (low + step * (code + 128)) = (q * step) . code + q . (low + 128 step)
        queries = np.ascontiguousarray(np.concatenate(
            [queries * self._step, (queries @ (self._low + 128.0 * self._step))[:, None]],
            axis=1), np.float32)
        best_keys = np.empty(beam + 1, np.float32)
        best_items = np.empty(beam + 1, np.int64)
        with self._lock:
            if self._stamp == np.iinfo(np.int32).max:
                self._visited[:] = 0
                self._blocked[:] = 0
                self._stamp = 0
            self._stamp += 1
            blocked = np.asarray(list(blocked), np.int64)
            if len(blocked):
                self._blocked[blocked] = self._stamp
            found = _search(queries, self.codes, self.neighbours, self.offsets,
                            self.level_starts, self.entry, self.top_level, beam,
                            self._visited, self._blocked, self._stamp, self._frontier_keys,
                            self._frontier_items, best_keys, best_items)
        return best_items[:found].copy()
