"""How each model family plugs into the one training library (TF Model Garden's ``Task``).

A :class:`ModelKind` says which inputs a model needs (its *featurizer*: the object that
turns table columns or raw strings into the int tensors the model reads), how the model
is built, which training rows it learns from, and how it is exported. ``train_lib``,
``tune_lib``, ``explain_lib`` and the benchmarks ask the kind instead of branching on
``model.kind``, so a new family is one new class here plus a config value.

======================  ===============================  ==================================
kind                    featurizer                       model
======================  ===============================  ==================================
bert, cross             TextPairPacker                   BERTRecommender (cross-encoder)
bert, two_tower         TwoTowerFeatures (text + ids)    TwoTowerRecommender
sasrec                  TwoTowerFeatures (ids only)      TwoTowerRecommender, no text
mf                      None (ids)                       MatrixFactorization
popularity              None (ids)                       MostPopular (counted, not fitted)
======================  ===============================  ==================================
"""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf

from models.baselines import MatrixFactorization, MostPopular
from models.bert_recommender import BERTRecommender
from models.layers.item_text_tokenizer import ItemTextTokenizer
from models.layers.pre_ln_bert_backbone import PreLNBertBackbone
from models.layers.text_pair_packer import TextPairPacker
from models.two_tower import TwoTowerRecommender
from trainer import config as config_lib
from trainer import input_pipeline


class ModelKind:
    """One model family's answers to the training library's questions."""

    name = ""
    #: reads text: needs a tokenizer (a vocabulary is learned for random init)
    uses_text = False

    def featurizer(self, cfg: config_lib.ExperimentConfig, vocabulary, catalogue,
                   ids: input_pipeline.IdVocabulary):
        """What ``input_pipeline.make_dataset(packer=...)`` and the export feed the model
        with (None: the id columns alone)."""
        return None

    def build(self, cfg: config_lib.ExperimentConfig, featurizer,
              ids: input_pipeline.IdVocabulary, train_table) -> keras.Model:
        """The model (call inside ``strategy.scope()``)."""
        raise NotImplementedError

    def dummy_batch(self, featurizer) -> dict:
        """A one-row batch that builds the model's weights."""
        return {"user_index": tf.zeros([1], tf.int32), "item_index": tf.zeros([1], tf.int32)}

    def training_rows(self, cfg: config_lib.ExperimentConfig, table):
        """The rows the model fits on (all of them, except for the in-batch softmax)."""
        return table

    def fit_counts(self, model: keras.Model, table) -> None:
        """Sets anything counted from the training rows rather than learned."""


def _tokenizer(cfg, vocabulary):
    return input_pipeline.make_tokenizer(vocabulary=vocabulary, lowercase=cfg.data.lowercase,
                                         pretrained=cfg.model.pretrained)


def _text_backbone(cfg, vocabulary_size: int):
    """The BERT encoder of a text model: pretrained, or random init of the config's sizes
    (pre-LN when ``model.normalize_first``; see models/layers/pre_ln_bert_backbone.py)."""
    m = cfg.model
    if m.pretrained:
        return BERTRecommender.load_backbone(m.pretrained)
    backbone_cls = PreLNBertBackbone if m.normalize_first else keras_hub.models.BertBackbone
    return backbone_cls(vocabulary_size=vocabulary_size, num_layers=m.num_layers,
                        num_heads=m.num_heads, hidden_dim=m.hidden_dim,
                        intermediate_dim=m.intermediate_dim, dropout=m.dropout,
                        max_sequence_length=m.max_sequence_length)


class CrossEncoder(ModelKind):
    """``[CLS] user side [SEP] item [SEP]`` through one BERT: the reranker and teacher."""

    name = "bert/cross"
    uses_text = True

    def featurizer(self, cfg, vocabulary, catalogue, ids):
        return TextPairPacker(_tokenizer(cfg, vocabulary), cfg.data.sequence_length,
                              cfg.data.item_max_tokens)

    def build(self, cfg, featurizer, ids, train_table):
        m = cfg.model
        backbone = _text_backbone(cfg, featurizer.tokenizer.vocabulary_size())
        return BERTRecommender(backbone, dropout=m.head_dropout, pooling=m.pooling)

    def dummy_batch(self, featurizer):
        return {**super().dummy_batch(featurizer),
                **featurizer(tf.constant(["a"]), tf.constant(["b"]))}


class TwoTower(ModelKind):
    """One shared item encoder for candidate, history items and query; a user transformer
    over them; a dot-product click head (models/two_tower.py)."""

    name = "bert/two_tower"
    uses_text = True

    def featurizer(self, cfg, vocabulary, catalogue, ids):
        tokenizer = None
        if self.uses_text:
            tokenizer = ItemTextTokenizer(_tokenizer(cfg, vocabulary), cfg.data.item_max_tokens)
        return input_pipeline.TwoTowerFeatures.build(
            tokenizer, catalogue, ids, cfg.data.item_text_fields, cfg.data.max_history)

    def _item_ids(self, cfg) -> bool:
        return cfg.model.item_ids

    def build(self, cfg, featurizer, ids, train_table):
        m = cfg.model
        encoder = None
        if self.uses_text:
            encoder = _text_backbone(cfg, featurizer.tokenizer.tokenizer.vocabulary_size())
        return TwoTowerRecommender(
            encoder, num_items=len(ids.items) if self._item_ids(cfg) else 0,
            max_history=cfg.data.max_history,
            embedding_dim=0 if encoder is not None else m.hidden_dim,
            pooling=m.pooling, user_layers=m.user_layers, user_heads=m.user_heads,
            user_intermediate_dim=m.intermediate_dim, dropout=m.dropout, loss=cfg.train.loss)

    def dummy_batch(self, featurizer):
        history = tf.fill([1, featurizer.max_history], "")
        return {**super().dummy_batch(featurizer),
                **featurizer.from_text(tf.constant(["a"]), history, tf.constant(["b"]))}

    def training_rows(self, cfg, table):
        if cfg.train.loss == "softmax":
            # In-batch negatives: every row is a positive; the other rows' candidates in
            # the batch are its negatives.
            return table.subset(table.label > 0)
        return table

    def fit_counts(self, model, table):
        if isinstance(model, TwoTowerRecommender):
            model.set_item_counts(table.item_index[table.label > 0])


class SequentialIds(TwoTower):
    """SASRec-style: the two-tower model over item ids alone (no text, no query)."""

    name = "sasrec"
    uses_text = False

    def _item_ids(self, cfg) -> bool:
        return True


class MatrixFactorizationKind(ModelKind):
    """User/item id embeddings and biases (models/baselines.py)."""

    name = "mf"

    def build(self, cfg, featurizer, ids, train_table):
        return MatrixFactorization(len(ids.users), len(ids.items), cfg.model.embedding_dim,
                                   cfg.model.l2)


class Popularity(ModelKind):
    """Training click counts, the same for every user (models/baselines.py)."""

    name = "popularity"

    def build(self, cfg, featurizer, ids, train_table):
        return MostPopular(len(ids.items))

    def fit_counts(self, model, table):
        model.set_counts(table.item_index, table.label)


def for_config(cfg: config_lib.ExperimentConfig) -> ModelKind:
    """The :class:`ModelKind` of ``cfg.model``."""
    m = cfg.model
    if m.kind == "bert":
        return TwoTower() if m.interaction == "two_tower" else CrossEncoder()
    return {"sasrec": SequentialIds, "mf": MatrixFactorizationKind,
            "popularity": Popularity}[m.kind]()
