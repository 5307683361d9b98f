"""Id-based baselines trained by the same training library as BERTRecommender.

Both take the ``user_index`` / ``item_index`` features the input pipeline always provides
(0 = an id unseen in training) and return a click logit of shape ``[batch]``, so the
comparison with the text model differs only in the model.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="bert_recommender")
class MostPopular(keras.Model):
    """Scores an item by how often it was clicked in training, the same for every user.

    The logit is ``log((clicks + 1) / (total + num_items))``; it has no trainable weights,
    so the training library only fits its counts (:meth:`set_counts`).
    """

    def __init__(self, num_items: int, **kwargs):
        super().__init__(**kwargs)
        self.num_items = num_items
        self.log_popularity = self.add_weight(
            shape=(num_items + 1,), initializer="zeros", trainable=False,
            name="log_popularity")

    @staticmethod
    def log_popularity_of(item_index: np.ndarray, label: np.ndarray,
                          num_items: int) -> np.ndarray:
        """float32 ``[num_items + 1]``: the logit of every item index, from training
        ``(item_index, label)`` columns (positives only)."""
        counts = np.bincount(item_index[label > 0], minlength=num_items + 1)[
            : num_items + 1].astype(np.float64)
        counts[0] = 0.0  # unknown items are least popular
        return np.log((counts + 1.0) / (counts.sum() + num_items + 1.0)).astype(np.float32)

    def set_counts(self, item_index: np.ndarray, label: np.ndarray) -> None:
        """Sets popularity from training ``(item_index, label)`` columns: positives only."""
        self.log_popularity.assign(self.log_popularity_of(item_index, label, self.num_items))

    def call(self, inputs, training=False):
        return ops.take(self.log_popularity, inputs["item_index"], axis=0)

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items}


@keras.saving.register_keras_serializable(package="bert_recommender")
class MatrixFactorization(keras.Model):
    """User/item id embeddings with biases; the logit is their dot product plus biases.

    Trained with binary cross-entropy on the same sampled negatives as the text model.
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 32,
                 l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_users = num_users
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.l2 = l2
        regularizer = keras.regularizers.L2(l2) if l2 else None
        init = keras.initializers.RandomNormal(stddev=0.05)
        self.user_embedding = keras.layers.Embedding(
            num_users + 1, embedding_dim, embeddings_initializer=init,
            embeddings_regularizer=regularizer, name="user_embedding")
        self.item_embedding = keras.layers.Embedding(
            num_items + 1, embedding_dim, embeddings_initializer=init,
            embeddings_regularizer=regularizer, name="item_embedding")
        self.user_bias = keras.layers.Embedding(num_users + 1, 1, embeddings_initializer="zeros",
                                                name="user_bias")
        self.item_bias = keras.layers.Embedding(num_items + 1, 1, embeddings_initializer="zeros",
                                                name="item_bias")
        self.global_bias = self.add_weight(shape=(), initializer="zeros", name="global_bias")

    def call(self, inputs, training=False):
        users, items = inputs["user_index"], inputs["item_index"]
        dot = ops.sum(self.user_embedding(users) * self.item_embedding(items), axis=-1)
        bias = ops.squeeze(self.user_bias(users), -1) + ops.squeeze(self.item_bias(items), -1)
        return dot + bias + self.global_bias

    def get_config(self):
        return {**super().get_config(), "num_users": self.num_users,
                "num_items": self.num_items, "embedding_dim": self.embedding_dim,
                "l2": self.l2}
