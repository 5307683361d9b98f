"""The two-tower kinds: ``two_tower`` (one shared item encoder for the candidate, the
history items and the query; a user transformer over them; a dot-product click head) and
``sasrec`` (the same model over item ids alone). The model is models/two_tower.py; this
module holds its featurizer, catalogue scoring, item index, served signatures and
settings."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from bert_recommender.explainability.token_attributions import integrated_gradients_tensors
from bert_recommender.explainability.two_tower_scorer import SlotRowView, TwoTowerScorer
from bert_recommender.models.layers.item_text_tokenizer import ItemTextTokenizer
from bert_recommender.models.layers.text_pair_packer import special_token_ids
from bert_recommender.models.two_tower import SOFTMAX_LOSSES, TwoTowerRecommender
from trainer.data.canonical import Catalogue
from trainer.data.input_pipeline import IdVocabulary
from trainer.errors import ConfigError
from trainer.kind_registry import register
from trainer.kinds import endpoints
from trainer.kinds.base import ModelKind
from trainer.kinds.item_index import ItemIndex
from trainer.kinds.text import text_backbone, text_settings, tokenizer_of


class TwoTowerFeatures:
    """Model inputs of the two-tower model, from item indices (tf.data) or raw strings
    (the SavedModel).

    The catalogue's item texts are tokenized once into ``item_tokens`` (``[N + 1, L]``,
    row 0 = no item), so a training batch gathers the rows it needs instead of
    tokenizing history and candidate texts again; only the query is tokenized per batch.
    Id features are the :class:`IdVocabulary` index for items training saw and 0 for the
    others, so unseen (cold-start) items are scored from their text alone.

    Args:
      tokenizer: an
        :class:`bert_recommender.models.layers.item_text_tokenizer.ItemTextTokenizer`, or
        None for an id-only model.
      item_ids: catalogue item ids, index-aligned with ``IdVocabulary.items`` (entry 0 is
        a placeholder for "no item").
      item_texts: their texts (``Item.text(data.item_text_fields)``), aligned the same way.
      trained_mask: ``IdVocabulary.trained_item_mask()``.
      max_history: H, the history items per example.
    """

    def __init__(self, tokenizer, item_ids: list, item_texts: list, trained_mask: np.ndarray,
                 max_history: int):
        self.tokenizer = tokenizer
        self.item_ids = list(item_ids)
        self.item_texts = list(item_texts)
        self.trained_mask = np.asarray(trained_mask, dtype=bool)
        self.max_history = max_history
        self.item_tokens = None
        if tokenizer is not None:
            tokens = [tokenizer(tf.constant(self.item_texts[i:i + 4096])).numpy()
                      for i in range(0, len(self.item_texts), 4096)]
            self.item_tokens = np.concatenate(tokens).astype(np.int32)
            self.item_tokens[0] = 0

    @classmethod
    def build(cls, tokenizer, catalogue: Catalogue, ids: IdVocabulary, item_text_fields: list,
              max_history: int) -> "TwoTowerFeatures":
        return cls(tokenizer, ids.item_id_list(), ids.item_texts(catalogue, item_text_fields),
                   ids.trained_item_mask(), max_history)

    def _id_features(self, index):
        trained = tf.gather(tf.constant(self.trained_mask), index)
        return tf.where(trained, index, tf.zeros_like(index))

    @property
    def text_columns(self) -> tuple:
        """The table's text columns :meth:`features` reads (the input pipeline leaves the
        others out of the dataset)."""
        return ("query",) if self.tokenizer is not None else ()

    def features(self, batch: dict) -> dict:
        """Model inputs from a batch of table columns (``item_index``, ``history_index``,
        ``query``); runs inside tf.data."""
        item = tf.cast(batch["item_index"], tf.int32)
        history = tf.cast(batch["history_index"], tf.int32)
        out = {"item_index": self._id_features(item),
               "history_index": self._id_features(history)}
        if self.tokenizer is not None:
            table = tf.constant(self.item_tokens)
            out["item_token_ids"] = tf.gather(table, item)
            out["history_token_ids"] = tf.gather(table, history)
            out["query_token_ids"] = self.tokenizer(batch["query"])
        return out

    def track_for_serving(self, archive) -> dict:
        """Tracks what :meth:`from_text` needs in a SavedModel (lookup tables, the
        tokenizer) on ``archive``; returns the tables as ``from_text`` keyword arguments."""
        index_table = self.index_table()
        archive.track(index_table)
        if self.tokenizer is not None:
            archive.track(self.tokenizer)
        return {"index_table": index_table}

    def index_table(self) -> "tf.lookup.StaticHashTable":
        """Item id string -> id-feature index (0 for unknown and untrained ids)."""
        index = np.arange(len(self.item_ids), dtype=np.int64) * self.trained_mask
        return tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.item_ids[1:]), tf.constant(index[1:])), default_value=0)

    def fit_history(self, values, padding=""):
        """``[b, any, ...]`` -> ``[b, H, ...]``: the H most recent kept, ``padding`` after
        (history texts or ids with "", history token ids with 0)."""
        values = values[:, : self.max_history]
        missing = self.max_history - tf.shape(values)[1]
        pads = [[0, 0], [0, missing]] + [[0, 0]] * (values.shape.rank - 2)
        return tf.pad(values, pads, constant_values=padding)

    def from_text(self, query, history_texts, item_texts, history_ids=None, item_ids=None,
                  index_table=None) -> dict:
        """Model inputs from raw strings: ``query`` ``[b]`` ("" = none), ``history_texts``
        ``[b, H]`` (most recent first, "" = padding), ``item_texts`` ``[b]`` and,
        optionally, the matching item id strings (looked up in ``index_table``; unknown
        ids get no id feature). Histories longer than H are cut to their H most recent
        items, shorter ones padded. What the SavedModel's signatures run."""
        item_texts = tf.convert_to_tensor(item_texts, tf.string)
        history_texts = self.fit_history(tf.convert_to_tensor(history_texts, tf.string))
        if history_ids is not None:
            history_ids = self.fit_history(tf.convert_to_tensor(history_ids, tf.string))
        batch = tf.shape(item_texts)[0]
        table = index_table if index_table is not None else self.index_table()

        def lookup(ids, shape):
            if ids is None:
                return tf.zeros(shape, tf.int32)
            return tf.cast(table.lookup(tf.convert_to_tensor(ids, tf.string)), tf.int32)

        out = {"item_index": lookup(item_ids, [batch]),
               "history_index": lookup(history_ids, tf.shape(history_texts))}
        if self.tokenizer is not None:
            out["item_token_ids"] = self.tokenizer(item_texts)
            out["history_token_ids"] = self.tokenizer(history_texts)
            out["query_token_ids"] = self.tokenizer(tf.convert_to_tensor(query, tf.string))
        return out


@register("two_tower")
class TwoTower(ModelKind):
    """One shared item encoder for candidate, history items and query; a user transformer
    over them; a dot-product click head (models/two_tower.py)."""

    description = ("two-tower: shared item text encoder (+ item ids), user transformer over "
                   "the query and history, dot-product click head")
    uses_text = True
    explains_words = True
    separate_towers = True
    scores_catalogue_from_item_vectors = True
    retrieves = True
    benchmark_overrides = ("model.item_ids=true", "model.pretrained=''")

    def check_config(self, cfg):
        super().check_config(cfg)
        m, d = cfg.model, cfg.data
        if self.uses_text and not m.pretrained and m.hidden_dim % m.num_heads:
            raise ConfigError(f"config key 'model.hidden_dim' ({m.hidden_dim}) must be "
                              f"divisible by 'model.num_heads' ({m.num_heads})")
        if m.user_layers < 0:
            raise ConfigError(f"config key 'model.user_layers' must be >= 0, got "
                              f"{m.user_layers}")
        if m.temperature <= 0:
            raise ConfigError(f"config key 'model.temperature' must be > 0, got "
                              f"{m.temperature}")
        if m.user_heads <= 0:
            raise ConfigError(f"config key 'model.user_heads' must be > 0, got {m.user_heads}")
        if m.hidden_dim % m.user_heads and not m.pretrained:
            raise ConfigError(f"config key 'model.hidden_dim' ({m.hidden_dim}) must be "
                              f"divisible by 'model.user_heads' ({m.user_heads})")
        if d.max_history <= 0:
            raise ConfigError("config key 'data.max_history' must be > 0 for a two-tower "
                              "model: its user tower reads the history items")
        if cfg.train.loss == "full_softmax" and self.uses_text:
            raise ConfigError(f"config key 'train.loss': full_softmax scores every catalogue "
                              f"item at each step, which model.kind={self.name} would encode "
                              "from text each time; use it with an id-only kind (sasrec, "
                              "gru4rec), or softmax (in-batch negatives)")

    def benchmark_settings(self, cfg):
        m, t = cfg.model, cfg.train
        settings = {}
        if self.uses_text:
            settings.update(text_settings(cfg), item_max_tokens=cfg.data.item_max_tokens)
        settings.update(loss=t.loss, item_ids=self._item_ids(cfg), user_layers=m.user_layers,
                        user_heads=m.user_heads, max_interest=m.max_interest,
                        max_history=cfg.data.max_history, dropout=m.dropout,
                        similarity=m.similarity,
                        **({"temperature": m.temperature} if m.similarity == "cosine" else {}))
        if not self.uses_text:
            settings["embedding_dim"] = m.hidden_dim
        return settings

    def featurizer(self, cfg, vocabulary, catalogue, ids, cache_dir=None):
        tokenizer = None
        if self.uses_text:
            tokenizer = ItemTextTokenizer(tokenizer_of(cfg, vocabulary), cfg.data.item_max_tokens)
        return TwoTowerFeatures.build(tokenizer, catalogue, ids, cfg.data.item_text_fields,
                                      cfg.data.max_history)

    def featurizer_state(self, featurizer):
        return {"item_ids": featurizer.item_ids, "item_texts": featurizer.item_texts,
                "trained": [int(i) for i in np.flatnonzero(featurizer.trained_mask)]}

    def load_featurizer(self, cfg, vocabulary, state):
        tokenizer = None
        if self.uses_text:
            tokenizer = ItemTextTokenizer(tokenizer_of(cfg, vocabulary), cfg.data.item_max_tokens)
        trained = np.zeros(len(state["item_ids"]), bool)
        trained[np.asarray(state["trained"], np.int64)] = True
        return TwoTowerFeatures(tokenizer, state["item_ids"], state["item_texts"], trained,
                                cfg.data.max_history)

    def _item_ids(self, cfg) -> bool:
        return cfg.model.item_ids

    def build(self, cfg, featurizer, ids, train_table):
        m = cfg.model
        encoder = None
        if self.uses_text:
            encoder = text_backbone(cfg, featurizer.tokenizer.tokenizer.vocabulary_size())
        model = TwoTowerRecommender(
            encoder, num_items=len(ids.items) if self._item_ids(cfg) else 0,
            max_history=cfg.data.max_history,
            embedding_dim=0 if encoder is not None else m.hidden_dim,
            pooling=m.pooling, user_layers=m.user_layers, user_heads=m.user_heads,
            user_pooling=m.user_pooling, similarity=m.similarity, temperature=m.temperature,
            user_intermediate_dim=m.intermediate_dim, dropout=m.dropout, loss=cfg.train.loss,
            max_interest=m.max_interest, catalogue_size=len(ids.items),
            deduplicate_items=self.deduplicates(cfg))
        model.set_trained_items(ids.trained_item_mask())
        return model

    def dummy_batch(self, featurizer):
        history = tf.fill([1, featurizer.max_history], "")
        return {**super().dummy_batch(featurizer),
                **featurizer.from_text(tf.constant(["a"]), history, tf.constant(["b"]))}

    def training_rows(self, cfg, table):
        if cfg.train.loss in SOFTMAX_LOSSES:
            # Every row is a positive; its negatives are the other rows' candidates in the
            # batch (softmax) or the whole catalogue (full_softmax).
            return table.positive_rows()
        return table

    def fit_counts(self, model, table):
        model.set_item_counts(table.positive_item_indices())

    @contextlib.contextmanager
    def unpinned_shapes(self, model):
        """Distinct-item encoding has data-dependent shapes (pfor has no converter for the
        UniqueV2 it finds repeated items with, and the profiler cannot count them)."""
        deduplicate = model.deduplicate_items
        model.deduplicate_items = False
        try:
            yield model
        finally:
            model.deduplicate_items = deduplicate

    def explanation_scorer(self, cfg, model, featurizer):
        if not self.uses_text:
            return super().explanation_scorer(cfg, model, featurizer)
        # One packed row per example, the texts the model encodes as slots; its user side
        # always keeps a query part (explainability/two_tower_scorer.py).
        scorer = TwoTowerScorer(model, featurizer, batch_size=cfg.train.eval_batch_size)
        scorer.target = self.explained_target(cfg)
        return scorer, scorer.compose

    @staticmethod
    def deduplicates(cfg) -> bool:
        """Whether the model finds repeated item texts and histories in a batch: not under
        XLA (jit_compile, TPU), which needs static shapes, and UniqueV2 has none."""
        return not cfg.train.jit_compile and cfg.runtime.strategy != "tpu"

    @staticmethod
    def explained_target(cfg) -> str:
        """What explanations attribute: the logit of a model trained with a softmax (its
        sigmoid is no click probability, and saturates for cosine logits over a small
        temperature), the click probability of one trained pointwise (bce)."""
        return "logit" if cfg.train.loss in SOFTMAX_LOSSES else "probability"

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

    def item_index(self, model, featurizer, batch_size):
        """Every catalogue item's vector, computed once from the item tower in batches."""
        rows = np.arange(1, len(featurizer.item_ids))  # row 0 is "no item"
        vectors, index = catalogue_item_vectors(model, featurizer, rows, batch_size)
        return ItemIndex(list(featurizer.item_ids[1:]), np.asarray(vectors, np.float32),
                         np.asarray(index, np.int32))

    def item_embeddings(self, model, featurizer, item_ids, catalogue, ids, item_text_fields,
                        item_index=None, batch_size=64):
        if item_index is not None:
            position = {item: i for i, item in enumerate(item_index.item_ids)}
            vectors = item_index.vectors[[position[i] for i in item_ids]]
        else:
            position = {item: row for row, item in enumerate(featurizer.item_ids)}
            rows = np.array([position[i] for i in item_ids], dtype=np.int64)
            vectors, _ = catalogue_item_vectors(model, featurizer, rows, batch_size)
        description = (f"{type(model).__name__} item tower: the cacheable item vector "
                       f"v(i) its click logit dots with the user vector (pooling="
                       f"{model.pooling}, item ids {'on' if model.num_items else 'off'})")
        return list(item_ids), np.asarray(vectors, np.float32), description

    def add_serving_endpoints(self, archive, model, featurizer, item_index=None):
        _serving_endpoints(archive, model, featurizer, item_index)

    def serving_request(self, featurizer, table):
        ids = np.asarray(featurizer.item_ids, dtype=object)
        texts = np.asarray(featurizer.item_texts, dtype=object)
        query = table.query if table.query is not None else np.full(len(table), "", object)
        return {"query": tf.constant(np.asarray(query, dtype=object).astype(str)),
                "history_text": tf.constant(texts[table.history_index].astype(str)),
                "history_ids": tf.constant(ids[table.history_index].astype(str)),
                "item_text": tf.constant(texts[table.item_index].astype(str)),
                "item_id": tf.constant(ids[table.item_index].astype(str))}

    def add_token_endpoints(self, archive, model, featurizer, item_index=None):
        if featurizer.tokenizer is None:
            return None
        return (featurizer.tokenizer.tokenizer,
                _token_endpoints(archive, model, featurizer, item_index))

    def token_request(self, featurizer, **raw_inputs):
        tokenize = featurizer.tokenizer
        return {"query_token_ids": tokenize(tf.constant(raw_inputs["query"])),
                "history_token_ids": tokenize(tf.constant(raw_inputs["history_text"])),
                "history_ids": tf.constant(raw_inputs["history_ids"]),
                "item_token_ids": tokenize(tf.constant(raw_inputs["item_text"])),
                "item_id": tf.constant(raw_inputs["item_id"])}


@register("sasrec")
class SequentialIds(TwoTower):
    """SASRec-style: the two-tower model over item ids alone (no text, no query)."""

    description = "SASRec-style: the two-tower model over item ids alone (no text)"
    uses_text = False
    explains_words = False
    benchmark_overrides = ()

    def _item_ids(self, cfg) -> bool:
        return True


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
        vectors.append(model.candidate_vectors(features))
        index.append(features["item_index"])
    return tf.concat(vectors, axis=0), tf.concat(index, axis=0)


def _serving_endpoints(archive: keras.export.ExportArchive, model, features,
                       item_index=None) -> None:
    """The two-tower signatures of trainer/serving/export.py's docstring."""
    tables = features.track_for_serving(archive)

    def inputs(query, history_text, history_ids, item_text, item_id):
        return features.from_text(query, history_text, item_text, history_ids=history_ids,
                                  item_ids=item_id, **tables)

    def serve(query, history_text, history_ids, item_text, item_id):
        return endpoints.outputs(model(inputs(query, history_text, history_ids, item_text, item_id),
                              training=False))

    def user_embedding(query, history_text, history_ids):
        empty = tf.fill(tf.shape(query), "")
        x = inputs(query, history_text, history_ids, empty, empty)
        state = model.user_state(x, training=False)
        out = {"user_embedding": tf.cast(state["user"], tf.float32)}
        if model.max_interest:
            out.update(user_interests=tf.cast(state["interests"], tf.float32),
                       interest_mask=tf.cast(state["interest_mask"], tf.int32))
        return out

    def item_embedding(item_text, item_id):
        x = inputs(tf.fill(tf.shape(item_text), ""), tf.fill([tf.shape(item_text)[0], 1], ""),
                   tf.fill([tf.shape(item_text)[0], 1], ""), item_text, item_id)
        vectors = model.candidate_vectors(x, training=False)
        bias = model.item_biases(x["item_index"]) + tf.cast(model.global_bias, tf.float32)
        return {"item_embedding": tf.cast(vectors, tf.float32), "item_bias": bias}

    text = tf.TensorSpec([None], tf.string)
    history = tf.TensorSpec([None, None], tf.string)
    if features.tokenizer is not None and model.item_encoder is not None:
        tokenizer = features.tokenizer.tokenizer
        vocabulary = tf.constant(tokenizer.get_vocabulary())
        special_ids = list(special_token_ids(tokenizer).values())
        view = SlotRowView(model, features.max_history, features.tokenizer.sequence_length)

        def explain(query, history_text, history_ids, item_text, item_id):
            x = inputs(query, history_text, history_ids, item_text, item_id)
            rows = view.rows(x)
            ig = integrated_gradients_tensors(view, rows, tf.zeros_like(rows), special_ids,
                                              fill_id=special_ids[0], steps=endpoints.EXPLAIN_STEPS)
            slot_ids = view.slot_ids(rows)
            return {"tokens": tf.gather(vocabulary, slot_ids),
                    "attributions": tf.reshape(
                        ig["attributions"][:, features.max_history + 1:], tf.shape(slot_ids)),
                    "click_probability": ig["score"],
                    "baseline_probability": ig["baseline_score"]}

        archive.add_endpoint("explain", explain, input_signature=[
            tf.TensorSpec.from_spec(text, name="query"),
            tf.TensorSpec.from_spec(history, name="history_text"),
            tf.TensorSpec.from_spec(history, name="history_ids"),
            tf.TensorSpec.from_spec(text, name="item_text"),
            tf.TensorSpec.from_spec(text, name="item_id")])
    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec([None], tf.string, name="query"),
        tf.TensorSpec([None, None], tf.string, name="history_text"),
        tf.TensorSpec([None, None], tf.string, name="history_ids"),
        tf.TensorSpec([None], tf.string, name="item_text"),
        tf.TensorSpec([None], tf.string, name="item_id")])
    archive.add_endpoint("user_embedding", user_embedding, input_signature=[
        tf.TensorSpec.from_spec(text, name="query"),
        tf.TensorSpec.from_spec(history, name="history_text"),
        tf.TensorSpec.from_spec(history, name="history_ids")])
    archive.add_endpoint("item_embedding", item_embedding, input_signature=[
        tf.TensorSpec.from_spec(text, name="item_text"),
        tf.TensorSpec.from_spec(text, name="item_id")])
    if item_index is not None:
        def user_inputs(query, history_text, history_ids):
            empty = tf.fill(tf.shape(query), "")
            return inputs(query, history_text, history_ids, empty, empty)

        endpoints.add_retrieve_endpoint(archive, model, user_inputs, item_index, [
            tf.TensorSpec([None], tf.string, name="query"),
            tf.TensorSpec([None, None], tf.string, name="history_text"),
            tf.TensorSpec([None, None], tf.string, name="history_ids")])


def _token_endpoints(archive, model, features, item_index) -> dict:
    """Two-tower signatures over token ids: what ``features.from_text`` computes, minus the
    tokenizer. Item ids stay strings (a core-TF hash table maps them)."""
    index_table = features.index_table()
    archive.track(index_table)
    length, max_history = features.tokenizer.sequence_length, features.max_history

    def inputs(query_token_ids, history_token_ids, history_ids, item_token_ids, item_id):
        history_token_ids = features.fit_history(history_token_ids, padding=0)
        history_ids = features.fit_history(history_ids)
        return {"query_token_ids": query_token_ids, "history_token_ids": history_token_ids,
                "item_token_ids": item_token_ids,
                "history_index": tf.cast(index_table.lookup(history_ids), tf.int32),
                "item_index": tf.cast(index_table.lookup(item_id), tf.int32)}

    def serve(query_token_ids, history_token_ids, history_ids, item_token_ids, item_id):
        return endpoints.outputs(model(inputs(query_token_ids, history_token_ids, history_ids,
                                     item_token_ids, item_id), training=False))

    user_signature = [tf.TensorSpec([None, length], tf.int32, name="query_token_ids"),
                      tf.TensorSpec([None, None, length], tf.int32, name="history_token_ids"),
                      tf.TensorSpec([None, None], tf.string, name="history_ids")]
    archive.add_endpoint("serving_default", serve, input_signature=user_signature + [
        tf.TensorSpec([None, length], tf.int32, name="item_token_ids"),
        tf.TensorSpec([None], tf.string, name="item_id")])
    if item_index is not None:
        def user_inputs(query_token_ids, history_token_ids, history_ids):
            empty = tf.fill(tf.shape(query_token_ids)[:1], "")
            return inputs(query_token_ids, history_token_ids, history_ids,
                          tf.zeros_like(query_token_ids), empty)

        endpoints.add_retrieve_endpoint(archive, model, user_inputs, item_index, user_signature)
    return {"interaction": "two_tower", "item_max_tokens": length,
            "max_history": max_history,
            "inputs": {"query_token_ids": f"int32 [batch, {length}]: the query's token ids, "
                                          "all 0 ([PAD]) when there is none",
                       "history_token_ids": f"int32 [batch, h, {length}]: the token ids of "
                                            "the user's most recent items, most recent "
                                            f"first; the first {max_history} are used, "
                                            "all-0 rows pad",
                       "history_ids": "string [batch, h]: those items' ids ('' pads)",
                       "item_token_ids": f"int32 [batch, {length}]: the candidate's token ids",
                       "item_id": "string [batch]: the candidate's id ('' or an id training "
                                  "never saw: scored from its text alone)",
                       "k": "int32 scalar (retrieve only): how many items to return"}}
