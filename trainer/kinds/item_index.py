"""The item index a retrieving kind saves with its run: every catalogue item's cached
vector, written under ``<model_dir>/item_index/`` (``vectors.npy`` ``[N, d]``,
``id_index.npy`` ``[N]``, ``item_ids.json``). Retrieval (trainer/serving/retrieval.py)
scores users against it; the export bakes it into the ``retrieve`` signature."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from trainer.errors import RunDirError
from trainer.io import atomic_directory, write_npy

ITEM_INDEX_DIR = "item_index"
FILES = ("vectors.npy", "id_index.npy", "item_ids.json")


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
        """Reads ``<model_dir>/item_index/`` as written by :meth:`save`."""
        path = os.path.join(model_dir, ITEM_INDEX_DIR)
        if not tf.io.gfile.exists(os.path.join(path, "item_ids.json")):
            raise RunDirError(f"{path}: no item index; it is written when a retrieving run "
                              "(model.kind=two_tower, sasrec) finishes training")
        with tf.io.gfile.GFile(os.path.join(path, "vectors.npy"), "rb") as f:
            vectors = np.load(f)
        with tf.io.gfile.GFile(os.path.join(path, "id_index.npy"), "rb") as f:
            id_index = np.load(f)
        with tf.io.gfile.GFile(os.path.join(path, "item_ids.json")) as f:
            item_ids = json.load(f)
        return cls(item_ids, vectors.astype(np.float32), id_index.astype(np.int32))
