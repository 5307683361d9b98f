"""Id-based baselines trained by the same training library as BERTRecommender.

They take the ``user_index`` / ``item_index`` features the input pipeline always provides
(0 = an id unseen in training; :class:`ItemKNN` also reads ``history_index``) and return
a score of shape ``[batch]``, so the comparison with the text model differs only in the
model.
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


@keras.saving.register_keras_serializable(package="bert_recommender")
class ItemKNN(keras.Model):
    """Sequential item-to-item nearest neighbours, counted from the training sequences.

    Two items are neighbours when they occur in the same user's training sequence: each
    training positive adds ``1 / d`` to both directions of the pair (history item, target)
    that stand ``d`` positions apart, so every ordered pair of a user's sequence counts
    once (the training rows are its prefixes). The co-occurrence of ``a`` and ``b`` is
    normalised by ``pop(a) ** alpha * pop(b) ** (1 - alpha)`` (``pop``: training
    positives + 1; ``alpha`` = ``popularity_exponent``; 1 is the conditional frequency
    of ``b`` given ``a``, 0.5 the cosine); each item keeps its ``neighbours`` strongest
    neighbours (RecBole's ItemKNN keeps 100). A user's score of a candidate is the sum,
    over the history (most recent first), of ``recency_decay ** position`` times the
    candidate's similarity to that history item, plus ``popularity_weight`` times the
    candidate's log popularity scaled to [0, 1]: a tie-break, so candidates no history
    item neighbours (most of them, for a short history) rank by popularity rather than
    all tie at 0. The logit is the log of that score (+ :data:`LOG_FLOOR`): with a
    popularity exponent near 1 the score estimates how likely the candidate is to follow
    the history, so its log is on the scale of a softmax-trained model's logits (a
    log-probability up to a per-user constant), which is what an ensemble averages.

    Nothing is learned by gradients: the training library fits the neighbour tables
    (:meth:`set_neighbours`). The logit is not calibrated for a click (its sigmoid is no
    click probability); rankings are what it is for.
    """

    #: added to the score before its log, so a candidate with no neighbour and no
    #: training positive has a finite logit (log 1e-6 = -13.8, below every other)
    LOG_FLOOR = 1e-6

    def __init__(self, num_items: int, neighbours: int = 100, recency_decay: float = 0.7,
                 popularity_exponent: float = 0.9, popularity_weight: float = 1e-3,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_items = num_items
        self.popularity_weight = popularity_weight
        self.neighbours = neighbours
        self.recency_decay = recency_decay
        self.popularity_exponent = popularity_exponent
        self.neighbour_index = self.add_weight(
            shape=(num_items + 1, neighbours), initializer="zeros", dtype="int32",
            trainable=False, name="neighbour_index")
        self.neighbour_weight = self.add_weight(
            shape=(num_items + 1, neighbours), initializer="zeros", trainable=False,
            name="neighbour_weight")
        self.popularity = self.add_weight(
            shape=(num_items + 1,), initializer="zeros", trainable=False, name="popularity")

    @staticmethod
    def neighbours_of(history_index: np.ndarray, item_index: np.ndarray, label: np.ndarray,
                      num_items: int, neighbours: int, popularity_exponent: float) -> tuple:
        """``(index int32 [num_items + 1, neighbours], weight float32 [same])``: each item's
        strongest neighbours (index 0 and weight 0 where it has fewer), from the training
        rows' ``history_index`` ``[rows, H]`` (most recent first, 0-padded),
        ``item_index`` and ``label`` (positives only)."""
        # scipy is installed with fairlearn and dp-accounting; sparse, because a catalogue's
        # dense [N, N] co-occurrence would not fit in memory at MIND's or a shop's size.
        from scipy import sparse

        clicked = np.asarray(label) > 0
        history = np.asarray(history_index, np.int64)[clicked]
        target = np.asarray(item_index, np.int64)[clicked]
        size = num_items + 1
        positions = np.broadcast_to(np.arange(1, history.shape[1] + 1), history.shape)
        present = (history > 0) & (target[:, None] > 0) & (history != target[:, None])
        source = history[present]
        sink = np.broadcast_to(target[:, None], history.shape)[present]
        distance = 1.0 / positions[present]
        # Duplicates sum: both directions of every (history item, target) pair.
        cooccurrence = sparse.coo_matrix(
            (np.concatenate([distance, distance]),
             (np.concatenate([source, sink]), np.concatenate([sink, source]))),
            shape=(size, size)).tocsr()
        popularity = np.bincount(target, minlength=size)[:size].astype(np.float64) + 1.0
        similarity = (sparse.diags(popularity ** -popularity_exponent) @ cooccurrence
                      @ sparse.diags(popularity ** (popularity_exponent - 1.0))).tocsr()
        out_index = np.zeros((size, neighbours), np.int32)
        out_weight = np.zeros((size, neighbours), np.float32)
        for item in range(size):
            start, end = similarity.indptr[item], similarity.indptr[item + 1]
            columns, values = similarity.indices[start:end], similarity.data[start:end]
            # The strongest first; ties by index, so the tables do not depend on the order
            # the rows came in.
            keep = np.lexsort((columns, -values))[:neighbours]
            out_index[item, :len(keep)] = columns[keep]
            out_weight[item, :len(keep)] = values[keep]
        return out_index, out_weight

    @staticmethod
    def scaled_log_popularity(item_index: np.ndarray, label: np.ndarray,
                              num_items: int) -> np.ndarray:
        """float32 ``[num_items + 1]``: ``log(training positives + 1)`` scaled to [0, 1]
        over the catalogue (0 at index 0, "no item")."""
        counts = np.bincount(np.asarray(item_index, np.int64)[np.asarray(label) > 0],
                             minlength=num_items + 1)[: num_items + 1]
        log_counts = np.log1p(counts.astype(np.float64))
        log_counts[0] = 0.0
        top = log_counts.max()
        return (log_counts / top if top > 0 else log_counts).astype(np.float32)

    def set_neighbours(self, history_index, item_index, label) -> None:
        """Counts the neighbour tables from training rows (see :meth:`neighbours_of`)."""
        index, weight = self.neighbours_of(history_index, item_index, label, self.num_items,
                                           self.neighbours, self.popularity_exponent)
        self.neighbour_index.assign(index)
        self.neighbour_weight.assign(weight)
        self.popularity.assign(self.scaled_log_popularity(item_index, label, self.num_items))

    def history_weights(self, history_index):
        """``[b, H]``: ``recency_decay ** position`` at each present history item, 0 at
        padding."""
        history = ops.convert_to_tensor(history_index, "int32")
        decay = ops.power(ops.cast(self.recency_decay, "float32"),
                          ops.cast(ops.arange(ops.shape(history)[1]), "float32"))
        return ops.cast(history > 0, "float32") * decay[None, :]

    def call(self, inputs, training=False):
        history = ops.cast(inputs["history_index"], "int32")  # [b, H], most recent first
        item = ops.cast(inputs["item_index"], "int32")  # [b]
        index = ops.take(self.neighbour_index, history, axis=0)  # [b, H, K]
        weight = ops.take(self.neighbour_weight, history, axis=0)
        match = ops.cast(ops.equal(index, item[:, None, None]), "float32")
        similarity = ops.sum(match * weight, axis=-1)  # [b, H]
        score = (ops.sum(similarity * self.history_weights(history), axis=-1)
                 + self.popularity_weight * ops.take(self.popularity, item, axis=0))
        return ops.log(score + self.LOG_FLOOR)

    def catalogue_scores(self, history_index) -> np.ndarray:
        """float32 ``[b, num_items + 1]``: :meth:`call`'s logit of every catalogue index
        (column 0 is "no item" and stays 0), from the neighbour tables in numpy."""
        history = np.asarray(history_index, np.int64)
        weights = np.asarray(self.history_weights(history), np.float32)
        index = np.asarray(self.neighbour_index)[history]  # [b, H, K]
        contribution = np.asarray(self.neighbour_weight)[history] * weights[:, :, None]
        out = np.zeros((len(history), self.num_items + 1), np.float32)
        rows = np.broadcast_to(np.arange(len(history))[:, None, None], index.shape)
        np.add.at(out, (rows.reshape(-1), index.reshape(-1)), contribution.reshape(-1))
        out += np.float32(self.popularity_weight) * np.asarray(self.popularity)[None, :]
        out = np.log(out + np.float32(self.LOG_FLOOR))
        out[:, 0] = 0.0
        return out

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items,
                "neighbours": self.neighbours, "recency_decay": self.recency_decay,
                "popularity_exponent": self.popularity_exponent,
                "popularity_weight": self.popularity_weight}
