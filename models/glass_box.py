"""A glass-box click model: a logistic regression over named, readable features, whose
exact per-feature contributions are its explanation.

For each distinct word ``w`` of the candidate's text (lower-cased alphanumeric words, not
word pieces) the model reads the word features

    has_word           1 (the candidate has the word)
    in_history>=1/2/3  the word occurs in at least 1 / 2 / 3 of the user's history items
    history_share      the share of the user's history items that contain the word
    in_query           the user's query contains the word

and for the candidate as a whole the item features

    popularity         log of (1 + the item's training clicks), normalised by the largest
    has_query          the user typed a query
    history_length     the share of the H history slots in use

The logit is ``bias + sum_w sum_f (shared_f + per_word[w, f]) * word_feature_f(w)
+ sum_g item_weight_g * item_feature_g``: each word's contribution
``sum_f (shared_f + per_word[w, f]) * word_feature_f(w)`` and each item feature's
``item_weight_g * item_feature_g`` add up, with the bias, to the logit exactly
(:meth:`GlassBoxRecommender.contributions`). ``shared`` generalises across words;
``per_word`` (L2-regularised, starts at 0) lets a word matter more or less than others
(e.g. a provider name shared by many history items says nothing about taste).

Inputs (from ``trainer.kinds.glass_box.GlassBoxFeatures``): ``candidate_words`` int32
``[b, W]`` (word ids, 0 = padding, repeats removed), ``history_words`` ``[b, H, W]``,
``query_words`` ``[b, Q]`` and ``item_index`` ``[b]``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

WORD_FEATURES = ("has_word", "in_history>=1", "in_history>=2", "in_history>=3",
                 "history_share", "in_query")
ITEM_FEATURES = ("popularity", "has_query", "history_length")


@keras.saving.register_keras_serializable(package="bert_recommender")
class GlassBoxRecommender(keras.Model):
    """The linear model of the module docstring.

    Args:
      vocabulary_size: word ids are in ``[0, vocabulary_size)`` (0 = padding).
      num_items: catalogue size (item indices ``1..num_items``; 0 = unknown).
      l2: L2 penalty on the per-word weights.
    """

    def __init__(self, vocabulary_size: int, num_items: int, l2: float = 1e-4, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)
        self.num_items = int(num_items)
        self.l2 = float(l2)
        self.shared = self.add_weight(shape=(len(WORD_FEATURES),), initializer="zeros",
                                      name="shared_word_weights")
        self.per_word = keras.layers.Embedding(
            self.vocabulary_size, len(WORD_FEATURES), embeddings_initializer="zeros",
            embeddings_regularizer=keras.regularizers.L2(l2) if l2 else None,
            name="per_word_weights")
        self.item_weights = self.add_weight(shape=(len(ITEM_FEATURES),), initializer="zeros",
                                            name="item_feature_weights")
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")
        # Counted from the training rows (set_item_counts), not learned.
        self.log_popularity = self.add_weight(shape=(self.num_items + 1,),
                                              initializer="zeros", trainable=False,
                                              name="log_popularity")

    def set_item_counts(self, item_index: np.ndarray) -> None:
        """Popularity from the training positives' item indices, scaled to [0, 1]."""
        counts = np.bincount(np.asarray(item_index, np.int64),
                             minlength=self.num_items + 1)[: self.num_items + 1]
        counts[0] = 0
        values = np.log1p(counts.astype(np.float64))
        self.log_popularity.assign((values / max(values.max(), 1.0)).astype(np.float32))

    def word_features(self, inputs):
        """``(features [b, W, F], present [b, W])`` of each candidate word."""
        candidate = ops.cast(inputs["candidate_words"], "int32")
        history = ops.cast(inputs["history_words"], "int32")
        query = ops.cast(inputs["query_words"], "int32")
        present = ops.cast(candidate > 0, "float32")
        # [b, W, H]: does history item h contain candidate word w
        in_item = ops.any(ops.equal(candidate[:, :, None, None], history[:, None, :, :]),
                          axis=-1)
        count = ops.sum(ops.cast(in_item, "float32"), axis=-1)
        items = ops.sum(ops.cast(ops.any(history > 0, axis=-1), "float32"), axis=-1)
        share = count / ops.maximum(items, 1.0)[:, None]
        in_query = ops.any(ops.equal(candidate[:, :, None], query[:, None, :]), axis=-1)
        features = ops.stack([ops.ones_like(count), ops.cast(count >= 1, "float32"),
                              ops.cast(count >= 2, "float32"),
                              ops.cast(count >= 3, "float32"), share,
                              ops.cast(in_query, "float32")], axis=-1)
        return features * present[:, :, None], present

    def item_features(self, inputs):
        """``[b, G]`` item features."""
        history = ops.cast(inputs["history_words"], "int32")
        query = ops.cast(inputs["query_words"], "int32")
        popularity = ops.take(self.log_popularity, ops.cast(inputs["item_index"], "int32"))
        has_query = ops.cast(ops.any(query > 0, axis=-1), "float32")
        used = ops.mean(ops.cast(ops.any(history > 0, axis=-1), "float32"), axis=-1)
        return ops.stack([popularity, has_query, used], axis=-1)

    def contributions(self, inputs) -> dict:
        """The exact decomposition of the logit: ``word_contributions`` ``[b, W]`` (0 at
        padding), ``item_contributions`` ``[b, G]`` (ITEM_FEATURES order), ``bias`` and
        ``logit`` ``[b]`` = bias + both sums."""
        features, _ = self.word_features(inputs)
        weights = self.shared + self.per_word(ops.cast(inputs["candidate_words"], "int32"))
        words = ops.sum(features * weights, axis=-1)
        items = self.item_features(inputs) * self.item_weights
        bias = ops.zeros_like(words[:, 0]) + self.bias
        return {"word_contributions": words, "item_contributions": items, "bias": bias,
                "logit": bias + ops.sum(words, axis=-1) + ops.sum(items, axis=-1)}

    def call(self, inputs, training=False):
        return self.contributions(inputs)["logit"]

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size,
                "num_items": self.num_items, "l2": self.l2}
