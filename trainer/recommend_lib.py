"""``python -m trainer.task recommend``: the top k catalogue items for a user, from a
two-tower run's saved item index (trainer/retrieval.py).

A user is a query ("" for none) and a history of catalogue item ids, most recent first.
The history's texts come from the run's catalogue; the user state is computed by the
trained model and scored against every cached item vector with ``score_matrix``; items in
the history are not recommended again.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from models.two_tower import TwoTowerRecommender
from trainer import retrieval
from trainer.errors import RunDirError, UserInputError
from trainer.train_lib import load_run_config, load_run_packer, prepare_data


class Recommender:
    """A loaded two-tower run: ``recommend(queries, histories, k)``.

    Args:
      model_dir: a finished two-tower run (``model.keras``, ``item_index/``).
    """

    def __init__(self, model_dir: str):
        cfg = load_run_config(model_dir)
        model_path = os.path.join(model_dir, "model.keras")
        if not tf.io.gfile.exists(model_path):
            raise RunDirError(f"{model_path}: not found; the run did not finish training")
        self.index = retrieval.ItemIndex.load(model_dir)
        self.model = keras.models.load_model(model_path)
        if not isinstance(self.model, TwoTowerRecommender):
            raise UserInputError(f"{model_dir}: recommend needs a two-tower run "
                                 "(model.interaction=two_tower or model.kind=sasrec)")
        self.featurizer = load_run_packer(cfg, model_dir, prepare_data(cfg, model_dir))
        self.position = {item: i for i, item in enumerate(self.index.item_ids)}

    def recommend(self, queries: list, histories: list, k: int = 10,
                  exclude_seen: bool = True) -> list:
        """One list per user of ``{"item_id", "logit", "click_probability"}``, best first.

        ``histories`` holds catalogue item ids per user, most recent first; an id the
        catalogue does not hold is refused (naming it) before anything is scored."""
        if len(queries) != len(histories):
            raise UserInputError(f"{len(queries)} queries but {len(histories)} histories")
        width = max(1, max((len(h) for h in histories), default=1))
        texts = np.full([len(histories), width], "", dtype=object)
        ids = np.full([len(histories), width], "", dtype=object)
        exclude = []
        for row, history in enumerate(histories):
            for col, item in enumerate(history):
                if item not in self.position:
                    raise UserInputError(f"history item {item!r} is not in the run's "
                                         f"catalogue ({len(self.index)} items)")
                ids[row, col] = item
                texts[row, col] = self.featurizer.item_texts[self.position[item] + 1]
            exclude.append([self.position[item] for item in history] if exclude_seen else [])
        empty = tf.fill([len(queries)], "")
        x = self.featurizer.from_text(tf.constant(list(queries), tf.string),
                                      tf.constant(texts.astype(str)), empty,
                                      history_ids=tf.constant(ids.astype(str)),
                                      item_ids=empty)
        state = self.model.user_state(x, training=False)
        scores = np.asarray(self.model.score_matrix(state, self.index.vectors,
                                                    self.index.id_index))
        positions, logits = retrieval.top_k(scores, k, exclude)
        return [[{"item_id": self.index.item_ids[p], "logit": float(z),
                  "click_probability": float(1.0 / (1.0 + np.exp(-z)))}
                 for p, z in zip(row_positions, row_logits)]
                for row_positions, row_logits in zip(positions, logits)]
