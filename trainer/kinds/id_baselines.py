"""The id-only baselines: ``mf`` (user/item id embeddings and biases) and ``popularity``
(training click counts, the same for every user); models/baselines.py."""

from __future__ import annotations

import numpy as np

from bert_recommender.models.baselines import MatrixFactorization, MostPopular
from trainer.kind_registry import register
from trainer.kinds.base import ModelKind


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
