"""Catalogue retrieval for two-tower runs: the item index saved with a run, and top-k.

After a two-tower run trains, every catalogue item's vector is computed once from the item
tower (batched, :func:`build_item_index`) and saved under ``<model_dir>/item_index/``
(``vectors.npy`` ``[N, d]``, ``id_index.npy`` ``[N]``, ``item_ids.json``). Retrieval scores
a user's state against all of them with the model's own ``score_matrix`` and keeps the top
k, excluding the items the user has already seen (:func:`top_k`, :func:`recommend`).

keras-rs' ``BruteForceRetrieval`` is not used: it scores one query vector by one dot
product per candidate, while this model's logit adds the best match over the user's parts
(``max_interest``) and a per-item bias, and it fixes k when the layer is built.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from trainer import model_kinds
from trainer.data.canonical import atomic_directory, read_npy, write_npy
from trainer.errors import RunDirError, UserInputError

ITEM_INDEX_DIR = "item_index"


@dataclasses.dataclass
class ItemIndex:
    """Cached item vectors of a catalogue, in ``item_ids`` order.

    ``id_index`` is each item's id-feature index (0 for items training never saw: they are
    scored from their text alone, as in training)."""

    item_ids: list
    vectors: np.ndarray
    id_index: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)

    def save(self, model_dir: str) -> str:
        """Writes ``<model_dir>/item_index/`` atomically; returns its path."""
        path = os.path.join(model_dir, ITEM_INDEX_DIR)
        with atomic_directory(path) as tmp:
            for name, array in (("vectors.npy", self.vectors), ("id_index.npy", self.id_index)):
                write_npy(os.path.join(tmp, name), array)
            with tf.io.gfile.GFile(os.path.join(tmp, "item_ids.json"), "w") as f:
                json.dump(list(self.item_ids), f)
        return path

    @classmethod
    def load(cls, model_dir: str) -> "ItemIndex":
        path = os.path.join(model_dir, ITEM_INDEX_DIR)
        if not tf.io.gfile.exists(os.path.join(path, "item_ids.json")):
            raise RunDirError(f"{path}: no item index; it is written when a two-tower run "
                              "finishes training (model.interaction=two_tower or "
                              "model.kind=sasrec)")
        arrays = {name: read_npy(os.path.join(path, f"{name}.npy"))
                  for name in ("vectors", "id_index")}
        with tf.io.gfile.GFile(os.path.join(path, "item_ids.json")) as f:
            item_ids = json.load(f)
        return cls(item_ids, arrays["vectors"].astype(np.float32),
                   arrays["id_index"].astype(np.int32))


def build_item_index(model, featurizer, batch_size: int = 512) -> ItemIndex:
    """Every catalogue item's vector under ``model`` (a ``TwoTowerRecommender``), computed
    once from the item tower in batches."""
    rows = np.arange(1, len(featurizer.item_ids))  # row 0 is "no item"
    vectors, index = model_kinds.catalogue_item_vectors(model, featurizer, rows, batch_size)
    return ItemIndex(list(featurizer.item_ids[1:]), np.asarray(vectors, np.float32),
                     np.asarray(index, np.int32))


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
