"""The ``gru4rec`` kind: GRU4Rec (Hidasi et al.), a GRU over the user's item ids
(models/gru4rec.py). It is an id-only two-tower model with another user tower, so its
featurizer, catalogue scoring, item index and served signatures are the ``sasrec`` kind's;
``model.user_layers`` is its GRU layers (0 reads as 1), ``model.hidden_dim`` the embedding
and state size."""

from __future__ import annotations

from bert_recommender.models.gru4rec import GRU4Rec
from trainer.errors import ConfigError
from trainer.kind_registry import register
from trainer.kinds.base import ModelKind
from trainer.kinds.two_tower import SequentialIds


@register("gru4rec")
class GRU4RecKind(SequentialIds):
    """GRU4Rec: the last GRU state over the history's item embeddings, dotted with the
    candidate's."""

    description = ("GRU4Rec (Hidasi et al.): a GRU over the history's item ids, its last "
                   "state dotted with item embeddings")
    benchmark_overrides = ()

    def check_config(self, cfg):
        ModelKind.check_config(self, cfg)  # not the transformer's head and layer checks
        if cfg.data.max_history <= 0:
            raise ConfigError("config key 'data.max_history' must be > 0 for gru4rec: the "
                              "GRU reads the history items")
        if cfg.model.hidden_dim <= 0:
            raise ConfigError(f"config key 'model.hidden_dim' must be > 0, got "
                              f"{cfg.model.hidden_dim}")

    @staticmethod
    def _gru_layers(cfg) -> int:
        return max(1, cfg.model.user_layers)

    def benchmark_settings(self, cfg):
        return {"loss": cfg.train.loss, "embedding_dim": cfg.model.hidden_dim,
                "gru_layers": self._gru_layers(cfg), "max_history": cfg.data.max_history,
                "dropout": cfg.model.dropout}

    def build(self, cfg, featurizer, ids, train_table):
        return GRU4Rec(num_items=len(ids.items), max_history=cfg.data.max_history,
                       embedding_dim=cfg.model.hidden_dim, gru_layers=self._gru_layers(cfg),
                       dropout=cfg.model.dropout, loss=cfg.train.loss,
                       catalogue_size=len(ids.items))
