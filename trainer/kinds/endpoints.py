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


# catalogue_top_k's top k: the best items of the groups of this many consecutive
# positions with the best maxima (the catalogue is padded to a multiple of it).
SCORE_GROUP = 128
# The most scores ([users x query slots, items]) catalogue_top_k computes in one product;
# a larger batch takes one product per query slot, folded into a running maximum.
ONE_PRODUCT_SCORES = 1 << 26
# The logit of a padding item (0 but for the constant coordinate): below any real item's.
PADDING_LOGIT = -1e30


def padded_retrieval_vectors(vectors: np.ndarray) -> np.ndarray:
    """``vectors [N, d']`` (``model.retrieval_vectors``) with rows added up to a multiple
    of ``SCORE_GROUP``, each scoring ``PADDING_LOGIT`` against any query (whose last
    coordinate is the constant 1), so catalogue_top_k never returns them."""
    padding = np.zeros((-len(vectors) % SCORE_GROUP, vectors.shape[1]), np.float32)
    padding[:, -1] = PADDING_LOGIT
    return np.concatenate([np.asarray(vectors, np.float32), padding])


def catalogue_top_k(queries, present, vectors, seen, k, size: int):
    """``(logits [b, k], positions [b, k])``: each user's ``k`` best catalogue items, best
    first, by the logit less the global bias (the best present query's inner product;
    ``queries [b, K, d']`` and ``present [b, K]`` as ``model.retrieval_queries`` gives
    them, ``vectors`` from :func:`padded_retrieval_vectors` for ``size`` items). ``seen
    [b, H]`` positions (-1 pads) are not returned but to fill k: at -inf, after every
    other item. Ties go to the lower position."""
    queries = tf.cast(queries, tf.float32)
    users, slots = tf.shape(queries)[0], tf.shape(queries)[1]
    # An absent slot repeats the user's first present query: the maximum is unchanged and
    # no pass over [b, N] masks it (a third of the time at 256 users x 1M items).
    first_present = tf.argmax(tf.cast(present, tf.int32), axis=1, output_type=tf.int32)
    queries = tf.where(present[..., None], queries,
                       tf.gather(queries, first_present, batch_dims=1)[:, None, :])

    def one_product():  # few users: the vectors are read once (2x faster at one user)
        scores = tf.matmul(tf.reshape(queries, [users * slots, -1]), vectors,
                           transpose_b=True)
        return tf.reduce_max(tf.reshape(scores, [users, slots, -1]), axis=1)

    def product_per_slot():  # memory stays [b, N] where one product holds [b, K, N]
        by_slot = tf.transpose(queries, [1, 0, 2])
        return tf.foldl(lambda best, slot: tf.maximum(
            best, tf.matmul(slot, vectors, transpose_b=True)), by_slot[1:],
            initializer=tf.matmul(by_slot[0], vectors, transpose_b=True))

    scores = tf.cond(users * slots * tf.shape(vectors)[0] <= ONE_PRODUCT_SCORES,
                     one_product, product_per_slot)
    # The best k + H: the seen items pushed out, k are left. They lie in the k + H groups
    # with the best maxima, so one top k runs over those groups' items, not over all N.
    groups = tf.reshape(scores, [users, -1, SCORE_GROUP])
    keep = k + tf.shape(seen)[1]
    best_groups = tf.math.top_k(tf.reduce_max(groups, axis=2),
                                tf.minimum(keep, tf.shape(groups)[1])).indices
    candidates = tf.reshape(tf.gather(groups, best_groups, batch_dims=1), [users, -1])
    # top_k puts equal logits lower index first: order the candidates by position for that.
    order = tf.argsort(best_groups, axis=1, stable=True)
    best_groups = tf.gather(best_groups, order, batch_dims=1)
    candidates = tf.reshape(tf.gather(tf.reshape(candidates, [users, -1, SCORE_GROUP]),
                                      order, batch_dims=1), [users, -1])
    positions = tf.reshape(best_groups[:, :, None] * SCORE_GROUP + tf.range(SCORE_GROUP),
                           [users, -1])
    best = tf.math.top_k(candidates, tf.minimum(keep, tf.shape(candidates)[1]))
    positions = tf.gather(positions, best.indices, batch_dims=1)
    is_seen = tf.reduce_any(positions[:, :, None] == seen[:, None, :], axis=-1)
    # Padding is among the candidates only when the catalogue has fewer than k + H items;
    # at -inf too, it sorts after the seen items (it was below them), so k real ones win.
    dropped = tf.logical_or(is_seen, positions >= size)
    top = tf.math.top_k(tf.where(dropped, -float("inf"), best.values), k)
    return top.values, tf.gather(positions, top.indices, batch_dims=1)


class _BakedItemIndex(tf.Module):
    """A run's item index as SavedModel variables and tables, for ``retrieve``: each
    item's vector and bias as the model's logit compares them
    (``model.retrieval_vectors``, ``[N, d + 1]``, padded: :func:`padded_retrieval_vectors`)."""

    def __init__(self, item_index, model):
        super().__init__(name="item_index")
        self.retrieval_vectors = tf.Variable(padded_retrieval_vectors(
            model.retrieval_vectors(item_index.vectors, item_index.id_index)),
            trainable=False, name="retrieval_vectors")
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
        queries, present = model.retrieval_queries(state)
        # Seen items: positions in the index (-1 = not in it).
        seen = tf.cast(baked.position.lookup(history_ids), tf.int32)
        k = tf.convert_to_tensor(k, tf.int32)
        with tf.control_dependencies([
                tf.debugging.assert_positive(k, message="retrieve: k must be >= 1"),
                tf.debugging.assert_less_equal(
                    k, size, message=f"retrieve: k must be <= the index's {size} items")]):
            logits, positions = catalogue_top_k(queries, present, baked.retrieval_vectors,
                                                seen, k, size)
        logits += tf.cast(model.global_bias, tf.float32)
        return {"item_ids": tf.gather(baked.item_ids, positions), "logits": logits,
                "click_probability": tf.sigmoid(logits)}

    archive.add_endpoint("retrieve", retrieve, input_signature=list(user_signature) + [
        tf.TensorSpec([], tf.int32, name="k")])
