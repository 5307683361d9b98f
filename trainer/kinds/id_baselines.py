"""The id-only baselines: ``mf`` (user/item id embeddings and biases), ``popularity``
(training click counts, the same for every user) and ``item_knn`` (item-to-item
neighbours counted from the training sequences); models/baselines.py."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bert_recommender.models.baselines import ItemKNN, MatrixFactorization, MostPopular
from trainer.errors import ConfigError, UserInputError
from trainer.kind_registry import register
from trainer.kinds import endpoints
from trainer.kinds.base import ModelKind
from trainer.kinds.two_tower import TwoTower, TwoTowerFeatures


@register("mf")
class MatrixFactorizationKind(ModelKind):
    """User/item id embeddings and biases (models/baselines.py)."""

    description = "matrix factorisation: user and item id embeddings and biases"
    scores_catalogue_from_item_vectors = True
    benchmark_overrides = ()

    def benchmark_settings(self, cfg):
        return {"embedding_dim": cfg.model.embedding_dim, "l2": cfg.model.l2}

    def build(self, cfg, featurizer, ids, train_table):
        return MatrixFactorization(len(ids.users), len(ids.items), cfg.model.embedding_dim,
                                   cfg.model.l2)

    def catalogue_logits(self, model, featurizer, user_rows, item_text, batch_size):
        """``user . item + user bias + item bias + global bias`` for the whole catalogue,
        read from the model's weights (the same sum as ``MatrixFactorization.call``)."""
        if len(item_text) != model.num_items + 1:
            raise ValueError(f"item_text has {len(item_text)} entries, the model "
                             f"{model.num_items + 1}")
        users = np.asarray(user_rows.user_index, np.int64)
        user = np.asarray(model.user_embedding.embeddings, np.float32)[users]
        item = np.asarray(model.item_embedding.embeddings, np.float32)
        user_bias = np.asarray(model.user_bias.embeddings, np.float32)[users, 0]
        item_bias = np.asarray(model.item_bias.embeddings, np.float32)[:, 0]
        logits = user @ item.T + user_bias[:, None] + item_bias[None, :]
        return (logits + np.float32(model.global_bias.numpy())).astype(np.float32)

    def item_embeddings(self, model, featurizer, item_ids, catalogue, ids, item_text_fields,
                        item_index=None, batch_size=64):
        """The rows of its item embedding table (``ids.items`` maps item id -> row)."""
        kept = [i for i in item_ids if i in ids.items]
        table = model.item_embedding.embeddings.numpy()
        vectors = table[np.array([ids.items[i] for i in kept], dtype=np.int64)]
        return kept, vectors, "MatrixFactorization item embedding table rows"


@register("popularity")
class Popularity(ModelKind):
    """Training click counts, the same for every user (models/baselines.py)."""

    description = "popularity: training click counts, the same ranking for every user"
    scores_catalogue_from_item_vectors = True
    counted = True
    benchmark_overrides = ()

    def build(self, cfg, featurizer, ids, train_table):
        return MostPopular(len(ids.items))

    def fit_counts(self, model, table):
        clicked = table.positive_item_indices()
        model.set_counts(clicked, np.ones(len(clicked), np.float32))

    def catalogue_logits(self, model, featurizer, user_rows, item_text, batch_size):
        """The training counts' log popularity, the same row for every user."""
        if len(item_text) != model.num_items + 1:
            raise ValueError(f"item_text has {len(item_text)} entries, the model "
                             f"{model.num_items + 1}")
        scores = np.asarray(model.log_popularity, np.float32)
        return np.tile(scores, (len(user_rows), 1))


@register("item_knn")
class ItemNeighbours(ModelKind):
    """Sequential item-to-item nearest neighbours (models/baselines.py ``ItemKNN``): the
    training-free baseline a learned sequential model has to beat."""

    description = ("item kNN: item-to-item neighbours counted from the training sequences, "
                   "summed over the history with a recency decay")
    scores_catalogue_from_item_vectors = True
    counted = True
    benchmark_overrides = ()

    def check_config(self, cfg):
        super().check_config(cfg)
        m = cfg.model
        if cfg.data.max_history <= 0:
            raise ConfigError("config key 'data.max_history' must be > 0 for model.kind="
                              "item_knn: it scores a candidate from the history items")
        if m.knn_neighbours < 1:
            raise ConfigError(f"config key 'model.knn_neighbours' must be >= 1, got "
                              f"{m.knn_neighbours}")
        if not 0.0 < m.knn_recency_decay <= 1.0:
            raise ConfigError(f"config key 'model.knn_recency_decay' must be in (0, 1], got "
                              f"{m.knn_recency_decay}")
        if not 0.0 <= m.knn_popularity_exponent <= 1.0:
            raise ConfigError(f"config key 'model.knn_popularity_exponent' must be in "
                              f"[0, 1], got {m.knn_popularity_exponent}")

    def benchmark_settings(self, cfg):
        m = cfg.model
        return {"neighbours": m.knn_neighbours, "recency_decay": m.knn_recency_decay,
                "popularity_exponent": m.knn_popularity_exponent,
                "max_history": cfg.data.max_history}

    # The history's item ids, through the id-only two-tower featurizer (items training
    # never saw read as 0, as they do for sasrec).
    featurizer_state = TwoTower.featurizer_state
    load_featurizer = TwoTower.load_featurizer

    def featurizer(self, cfg, vocabulary, catalogue, ids, cache_dir=None):
        return TwoTowerFeatures.build(None, catalogue, ids, cfg.data.item_text_fields,
                                      cfg.data.max_history)

    def build(self, cfg, featurizer, ids, train_table):
        m = cfg.model
        return ItemKNN(len(ids.items), neighbours=m.knn_neighbours,
                       recency_decay=m.knn_recency_decay,
                       popularity_exponent=m.knn_popularity_exponent)

    def dummy_batch(self, featurizer):
        return {**super().dummy_batch(featurizer),
                "history_index": tf.zeros([1, featurizer.max_history], tf.int32)}

    def fit_counts(self, model, table):
        if getattr(table, "history_index", None) is None:
            raise UserInputError("model.kind=item_knn counts its neighbours from the training "
                                 "rows' histories, which streamed TFRecord shards "
                                 "(data.tfrecord_dir) do not hold in memory; train it from "
                                 "the data source itself (data.tfrecord_dir='')")
        model.set_neighbours(table.history_index, table.item_index, table.label)

    def catalogue_logits(self, model, featurizer, user_rows, item_text, batch_size):
        """:meth:`ItemKNN.catalogue_scores` of each user's history, in blocks of users."""
        if len(item_text) != model.num_items + 1:
            raise ValueError(f"item_text has {len(item_text)} entries, the model "
                             f"{model.num_items + 1}")
        history = np.asarray(featurizer.features(
            {"item_index": tf.zeros([len(user_rows)], tf.int32),
             "history_index": tf.constant(user_rows.history_index, tf.int32)}
        )["history_index"])
        block = max(1, 2 ** 22 // max(1, history.shape[1] * model.neighbours))
        return np.concatenate([model.catalogue_scores(history[start:start + block])
                               for start in range(0, len(history), block)]
                              or [np.zeros((0, model.num_items + 1), np.float32)])

    def add_serving_endpoints(self, archive, model, featurizer, item_index=None):
        """``serving_default(history_ids [b, H] (most recent first, "" = padding),
        item_id [b])``: the raw item ids, looked up in the run's id table (unknown ids
        score nothing)."""
        table = featurizer.track_for_serving(archive)["index_table"]

        def serve(history_ids, item_id):
            history = tf.cast(table.lookup(featurizer.fit_history(history_ids)), tf.int32)
            item = tf.cast(table.lookup(item_id), tf.int32)
            return endpoints.outputs(model({"history_index": history, "item_index": item},
                                           training=False))

        archive.add_endpoint("serving_default", serve, input_signature=[
            tf.TensorSpec([None, None], tf.string, name="history_ids"),
            tf.TensorSpec([None], tf.string, name="item_id")])

    def serving_request(self, featurizer, table):
        ids = np.asarray(featurizer.item_ids, dtype=object)
        return {"history_ids": tf.constant(ids[table.history_index].astype(str)),
                "item_id": tf.constant(ids[table.item_index].astype(str))}
