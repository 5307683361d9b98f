"""Pieces every kind's SavedModel signatures share: the output dict and ``retrieve`` over a
baked-in item index (the signatures themselves are the kinds'; trainer/serving/export.py
writes the archive)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Integrated-gradients steps of the served ``explain`` signatures.
EXPLAIN_STEPS = 32


def outputs(logits) -> dict:
    """``{"click_probability", "logit"}``, float32, from a model's logits."""
    logits = tf.cast(logits, tf.float32)
    return {"click_probability": tf.sigmoid(logits), "logit": logits}


class _BakedItemIndex(tf.Module):
    """A run's item index as SavedModel variables and tables, for ``retrieve``: each
    item's vector and bias as the model's logit compares them
    (``model.retrieval_vectors``, ``[N, d + 1]``)."""

    def __init__(self, item_index, model):
        super().__init__(name="item_index")
        self.retrieval_vectors = tf.Variable(
            np.asarray(model.retrieval_vectors(item_index.vectors, item_index.id_index),
                       np.float32), trainable=False, name="retrieval_vectors")
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
    baked = _BakedItemIndex(item_index, model)
    archive.track(baked)
    size = len(item_index)

    def retrieve(query, history, history_ids, k):
        state = model.user_state(user_inputs(query, history, history_ids), training=False)
        # The logit as a maximum of inner products (model.retrieval_queries): one [b, N]
        # product per query slot, folded into a running maximum, so memory stays [b, N]
        # where score_matrix would hold [b, parts, N] (7 GB at 256 users x 1M items).
        queries, present = model.retrieval_queries(state)

        def best_so_far(scores, slot):  # slot: one query per user, and whether present
            slot_scores = tf.matmul(slot[0], baked.retrieval_vectors, transpose_b=True)
            return tf.maximum(scores, tf.where(slot[1][:, None], slot_scores, -float("inf")))

        # The history width is dynamic in the signature: a graph loop over the slots.
        scores = tf.foldl(best_so_far, (tf.transpose(tf.cast(queries, tf.float32), [1, 0, 2]),
                                        tf.transpose(present)),
                          initializer=tf.fill([tf.shape(queries)[0], size], -float("inf")))
        scores += tf.cast(model.global_bias, tf.float32)
        # Seen items (positions in the index; -1 = not in it) are set to -inf in place.
        seen = tf.cast(baked.position.lookup(history_ids), tf.int32)
        where = tf.where(seen >= 0)
        scores = tf.tensor_scatter_nd_update(
            scores, tf.stack([tf.cast(where[:, 0], tf.int32), tf.gather_nd(seen, where)], 1),
            tf.fill([tf.shape(where)[0]], -float("inf")))
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
