"""How each model family plugs into the one training library (TF Model Garden's ``Task``).

A :class:`ModelKind` says which inputs a model needs (its *featurizer*: the object that
turns table columns or raw strings into the int tensors the model reads), how the model
is built, which training rows it learns from, and how it is explained. ``train_lib``,
``tune_lib``, ``explain_lib`` and the benchmarks ask the kind instead of branching on
``model.kind``, so a new family is one new class here plus a config value.

======================  ===============================  ==================================
kind                    featurizer                       model
======================  ===============================  ==================================
bert, cross             TextPairPacker                   BERTRecommender (cross-encoder)
bert, two_tower         TwoTowerFeatures (text + ids)    TwoTowerRecommender
sasrec                  TwoTowerFeatures (ids only)      TwoTowerRecommender, no text
glass_box               GlassBoxFeatures (words)         GlassBoxRecommender (linear)
mf                      None (ids)                       MatrixFactorization
popularity              None (ids)                       MostPopular (counted, not fitted)
======================  ===============================  ==================================
"""

from __future__ import annotations

import functools

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from explainability.pair_scorer import PairScorer
from explainability.two_tower_scorer import TwoTowerScorer
from models.baselines import MatrixFactorization, MostPopular
from models.bert_recommender import BERTRecommender
from models.glass_box import GlassBoxRecommender
from models.layers.item_text_tokenizer import ItemTextTokenizer
from models.layers.pre_ln_bert_backbone import PreLNBertBackbone
from models.layers.text_pair_packer import TextPairPacker
from models.two_tower import TwoTowerRecommender
from trainer import config as config_lib
from trainer.data import input_pipeline


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

    def explanation_scorer(self, cfg: config_lib.ExperimentConfig, model: keras.Model,
                           featurizer) -> tuple:
        """``(scorer, compose)`` through which ``explainability`` reads the model: the
        scorer edits and re-scores packed rows, ``compose(query, texts oldest first)``
        writes the user side it packs. Id-only kinds have no words to explain."""
        raise ValueError(f"model.kind={cfg.model.kind} reads no words to explain")

    def catalogue_logits(self, model: keras.Model, featurizer, user_rows, item_text,
                         batch_size: int) -> np.ndarray:
        """Logits of every user in ``user_rows`` (a ``PairTable``, one row per user: its
        user/history/query columns are read, its candidate ignored) against every
        catalogue item: float32 ``[users, N + 1]``, column = ``IdVocabulary.items`` index
        (column 0, "no item", is left at 0 and means nothing).

        ``item_text`` holds the N + 1 item texts (entry 0 ""), index-aligned the same way.
        This generic version scores every (user, item) pair through ``model.predict`` as
        training's evaluation does: right for any model, but N forward passes per user
        (a cross-encoder has no cheaper way). Kinds with separable scores override it.
        """
        num = len(item_text)
        out = np.zeros([len(user_rows), num], np.float32)
        if num <= 1 or not len(user_rows):
            return out
        items = np.arange(1, num, dtype=np.int32)
        out[:, 1:] = self.candidate_logits(model, featurizer, user_rows,
                                           np.broadcast_to(items, (len(user_rows), num - 1)),
                                           item_text, batch_size)
        return out

    def candidate_logits(self, model: keras.Model, featurizer, user_rows, candidates,
                         item_text, batch_size: int) -> np.ndarray:
        """Logits of each user in ``user_rows`` (one row per user, as in
        :meth:`catalogue_logits`) against its own candidates: ``candidates`` int
        ``[users, n]`` of ``IdVocabulary.items`` indices -> float32 ``[users, n]``.

        What a reranking stage runs on a retrieval stage's top n. Every (user, candidate)
        pair goes through ``model.predict`` on the same input pipeline as evaluation, so
        it is right for every kind."""
        candidates = np.asarray(candidates, np.int32)
        users, n = candidates.shape
        out = np.zeros([users, n], np.float32)
        if not users or not n:
            return out
        texts = np.asarray(item_text, dtype=object)
        users_per_call = max(1, 65536 // n)  # bounds the pair table's size
        for start in range(0, users, users_per_call):
            rows = np.arange(start, min(start + users_per_call, users))
            pairs = user_rows.subset(np.repeat(rows, n))
            pairs.item_index = candidates[rows].reshape(-1)
            pairs.item_text = texts[pairs.item_index]
            pairs.label = np.zeros(len(pairs.item_index), np.float32)
            data = input_pipeline.make_dataset(pairs, batch_size, packer=featurizer,
                                               with_labels=False)
            logits = np.asarray(model.predict(data, verbose=0), np.float32)
            out[rows] = logits.reshape(len(rows), n)
        return out


def user_side_composer(max_history: int):
    """``compose(query, titles oldest first)``: the cross-encoder's user side, as training
    wrote it (``input_pipeline.user_side_text``)."""
    return functools.partial(_user_side, max_history=max_history)


def _user_side(query, titles, max_history):
    return input_pipeline.user_side_text(query, titles, max_history)


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

    def explanation_scorer(self, cfg, model, featurizer):
        return (PairScorer(model, featurizer, batch_size=cfg.train.eval_batch_size),
                user_side_composer(cfg.data.max_history))


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
            user_pooling=m.user_pooling,
            user_intermediate_dim=m.intermediate_dim, dropout=m.dropout, loss=cfg.train.loss,
            max_interest=m.max_interest, catalogue_size=len(ids.items),
            # XLA (jit_compile, TPU) needs static shapes; distinct-item encoding has none.
            deduplicate_items=not cfg.train.jit_compile and cfg.runtime.strategy != "tpu")

    def dummy_batch(self, featurizer):
        history = tf.fill([1, featurizer.max_history], "")
        return {**super().dummy_batch(featurizer),
                **featurizer.from_text(tf.constant(["a"]), history, tf.constant(["b"]))}

    def training_rows(self, cfg, table):
        if cfg.train.loss == "softmax":
            # In-batch negatives: every row is a positive; the other rows' candidates in
            # the batch are its negatives.
            return table.positive_rows()
        return table

    def explanation_scorer(self, cfg, model, featurizer):
        if not self.uses_text:
            return super().explanation_scorer(cfg, model, featurizer)
        # One packed row per example, the texts the model encodes as slots; its user side
        # always keeps a query part (explainability/two_tower_scorer.py).
        scorer = TwoTowerScorer(model, featurizer, batch_size=cfg.train.eval_batch_size)
        return scorer, scorer.compose

    def fit_counts(self, model, table):
        if isinstance(model, TwoTowerRecommender):
            model.set_item_counts(table.positive_item_indices())

    def catalogue_logits(self, model, featurizer, user_rows, item_text, batch_size):
        """``score_matrix`` of each user batch's state against the whole catalogue's item
        vectors, computed once (ids of items training never saw are zeroed by
        ``featurizer.features`` exactly as in training and prediction)."""
        num = len(item_text)
        if num != len(featurizer.item_ids):
            raise ValueError(f"item_text has {num} entries, the featurizer's catalogue "
                             f"{len(featurizer.item_ids)}")
        history = featurizer.max_history
        vectors, index = catalogue_item_vectors(model, featurizer, np.arange(num), batch_size)
        # The max-interest term holds a [users, 1 + H, N] tensor: keep it near 128 MB.
        users_per_call = max(1, min(batch_size, 2 ** 25 // (num * (1 + history))))
        out = np.zeros([len(user_rows), num], np.float32)
        queries = (user_rows.query if user_rows.query is not None
                   else np.full(len(user_rows), "", dtype=object))
        for start in range(0, len(user_rows), users_per_call):
            rows = slice(start, min(start + users_per_call, len(user_rows)))
            state = model.user_state(_features(featurizer, user_rows.item_index[rows],
                                               user_rows.history_index[rows], queries[rows]))
            out[rows] = np.asarray(model.score_matrix(state, vectors, index), np.float32)
        return out


def _features(featurizer, item_index, history_index, query) -> dict:
    """Two-tower model inputs from table columns, through ``featurizer.features`` (so ids
    training never saw are zeroed exactly as in training and prediction)."""
    batch = {"item_index": tf.constant(item_index, tf.int32),
             "history_index": tf.constant(history_index, tf.int32)}
    if featurizer.tokenizer is not None:
        batch["query"] = tf.constant(np.asarray(query, dtype=object).astype(str))
    return featurizer.features(batch)


def catalogue_item_vectors(model, featurizer, rows: np.ndarray, batch_size: int) -> tuple:
    """``(item vectors [n, d], id-feature index [n])`` of catalogue ``rows``
    (``TwoTowerFeatures`` indices) under a two-tower ``model``, in batches: what catalogue
    scoring caches and the embedding projector shows."""
    vectors, index = [], []
    for start in range(0, len(rows), batch_size):
        chunk = np.asarray(rows[start:start + batch_size], np.int32)
        features = _features(featurizer, chunk,
                             np.zeros([len(chunk), featurizer.max_history], np.int32),
                             [""] * len(chunk))
        vectors.append(model.item_vectors(features.get("item_token_ids"),
                                          features["item_index"]))
        index.append(features["item_index"])
    return tf.concat(vectors, axis=0), tf.concat(index, axis=0)


class SequentialIds(TwoTower):
    """SASRec-style: the two-tower model over item ids alone (no text, no query)."""

    name = "sasrec"
    uses_text = False

    def _item_ids(self, cfg) -> bool:
        return True


class GlassBox(ModelKind):
    """A logistic regression over named word and item features whose exact contributions
    are the explanation (models/glass_box.py); the glass-box distillation student."""

    name = "glass_box"

    def featurizer(self, cfg, vocabulary, catalogue, ids):
        return input_pipeline.GlassBoxFeatures.build(catalogue, ids, cfg.data.item_text_fields,
                                                     cfg.data.max_history)

    def build(self, cfg, featurizer, ids, train_table):
        return GlassBoxRecommender(len(featurizer.words) + 1, len(ids.items), l2=cfg.model.l2)

    def dummy_batch(self, featurizer):
        return {**super().dummy_batch(featurizer), **featurizer.features({
            "item_index": tf.zeros([1], tf.int32),
            "history_index": tf.zeros([1, featurizer.max_history], tf.int32),
            "query": tf.constant([""])})}

    def fit_counts(self, model, table):
        model.set_item_counts(table.positive_item_indices())


class MatrixFactorizationKind(ModelKind):
    """User/item id embeddings and biases (models/baselines.py)."""

    name = "mf"

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


class Popularity(ModelKind):
    """Training click counts, the same for every user (models/baselines.py)."""

    name = "popularity"

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


def for_config(cfg: config_lib.ExperimentConfig) -> ModelKind:
    """The :class:`ModelKind` of ``cfg.model``."""
    m = cfg.model
    if m.kind == "bert":
        return TwoTower() if m.interaction == "two_tower" else CrossEncoder()
    return {"sasrec": SequentialIds, "mf": MatrixFactorizationKind, "glass_box": GlassBox,
            "popularity": Popularity}[m.kind]()
