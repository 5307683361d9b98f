"""Pieces every kind's SavedModel signatures share: the output dict and ``retrieve`` over a
baked-in item index (the signatures themselves are the kinds'; trainer/serving/export.py
writes the archive)."""

from __future__ import annotations

import tensorflow as tf

# Integrated-gradients steps of the served ``explain`` signatures.
EXPLAIN_STEPS = 32


def outputs(logits) -> dict:
    """``{"click_probability", "logit"}``, float32, from a model's logits."""
    logits = tf.cast(logits, tf.float32)
    return {"click_probability": tf.sigmoid(logits), "logit": logits}


class _BakedItemIndex(tf.Module):
    """A run's item index as SavedModel variables and tables, for ``retrieve``."""

    def __init__(self, item_index):
        super().__init__(name="item_index")
        self.vectors = tf.Variable(item_index.vectors, trainable=False, name="vectors")
        self.id_index = tf.Variable(item_index.id_index, trainable=False, name="id_index")
        self.item_ids = tf.Variable(tf.constant(list(item_index.item_ids), tf.string),
                                    trainable=False, name="item_ids")
        # Item id -> position in the index (-1 for ids it does not hold), to drop seen items.
        self.position = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(item_index.item_ids), tf.string),
                tf.range(len(item_index), dtype=tf.int64)), default_value=-1)


def add_retrieve_endpoint(archive, model, user_inputs, item_index,
                          user_signature: list) -> None:
    """``retrieve(*user_signature, k)``; ``user_inputs(query, history, history_ids)`` gives
    the model inputs of those users (with any placeholder candidate)."""
    baked = _BakedItemIndex(item_index)
    archive.track(baked)
    size = len(item_index)

    def retrieve(query, history, history_ids, k):
        state = model.user_state(user_inputs(query, history, history_ids), training=False)
        scores = tf.cast(model.score_matrix(state, baked.vectors, baked.id_index), tf.float32)
        # Seen items: a [b, N] mask from the history's positions (-1 = not in the index,
        # whose one-hot row is all zeros).
        seen = tf.reduce_max(tf.one_hot(baked.position.lookup(history_ids), size,
                                        dtype=tf.float32), axis=1)
        scores = tf.where(seen > 0, tf.constant(-float("inf")), scores)
        k = tf.convert_to_tensor(k, tf.int32)
        with tf.control_dependencies([
                tf.debugging.assert_positive(k, message="retrieve: k must be >= 1"),
                tf.debugging.assert_less_equal(
                    k, size, message=f"retrieve: k must be <= the index's {size} items")]):
            top = tf.math.top_k(scores, k=k, sorted=True)
        return {"item_ids": tf.gather(baked.item_ids, top.indices), "logits": top.values,
                "click_probability": tf.sigmoid(top.values)}

    archive.add_endpoint("retrieve", retrieve, input_signature=list(user_signature) + [
        tf.TensorSpec([], tf.int32, name="k")])
