"""The ``glass_box`` kind: a logistic regression over named word and item features whose
exact contributions are the explanation (models/glass_box.py); the glass-box distillation
student. This module holds its word featurizer and served signatures."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bert_recommender.models.glass_box import ITEM_FEATURES, GlassBoxRecommender
from trainer.data.canonical import Catalogue
from trainer.data.input_pipeline import IdVocabulary
from trainer.kind_registry import register
from trainer.kinds import endpoints
from trainer.kinds.base import ModelKind


class GlassBoxFeatures:
    """Word-id inputs of the glass-box model (models/glass_box.py), from item indices
    (tf.data) or item id strings (the SavedModel).

    Words are lower-cased runs of letters and digits (:meth:`split_words`), not word
    pieces, so every feature names a word a person reads. Each catalogue item's distinct
    words are looked up once into ``item_words`` (``[N + 1, W]``, 0 = padding, the first
    ``max_item_words`` distinct words); the query is split per batch and its words
    outside the catalogue's vocabulary map to 0 (they cannot match a candidate word).

    Args:
      words: the word vocabulary; word id ``i + 1`` is ``words[i]``.
      item_ids: catalogue item ids, index-aligned with ``IdVocabulary.items`` (entry 0 is
        "no item").
      item_texts: their texts, aligned the same way.
      max_history: H, the history items per example.
    """

    WORD_PATTERN = r"[^a-z0-9]+"

    def __init__(self, words: list, item_ids: list, item_texts: list, max_history: int,
                 max_item_words: int = 32, max_query_words: int = 16):
        self.words = list(words)
        self.item_ids = list(item_ids)
        self.item_texts = list(item_texts)
        self.max_history = max_history
        self.max_query_words = max_query_words
        self.word_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.words or [""], tf.string),
                tf.range(1, max(len(self.words), 1) + 1, dtype=tf.int64)), default_value=0)
        rows = []
        for text in self.item_texts:
            seen = []
            for word_id in self.word_ids([text])[0]:
                if word_id and word_id not in seen:
                    seen.append(word_id)
            rows.append(seen[:max_item_words])
        width = max(1, max(len(r) for r in rows))
        self.item_words = np.zeros([len(rows), width], np.int32)
        for i, row in enumerate(rows):
            self.item_words[i, :len(row)] = row
        self.item_words[0] = 0

    @classmethod
    def split_words(cls, texts) -> tf.RaggedTensor:
        """Lower-cased alphanumeric words of each string (a ragged ``[b, None]``)."""
        texts = tf.strings.regex_replace(tf.strings.lower(tf.convert_to_tensor(texts)),
                                         cls.WORD_PATTERN, " ")
        return tf.strings.split(tf.strings.strip(texts))

    @classmethod
    def build(cls, catalogue: Catalogue, ids: IdVocabulary, item_text_fields: list,
              max_history: int) -> "GlassBoxFeatures":
        texts = ids.item_texts(catalogue, item_text_fields)[1:]
        words = set()
        for start in range(0, len(texts), 4096):
            split = cls.split_words(tf.constant(texts[start:start + 4096]))
            words.update(w.decode() for w in split.flat_values.numpy())
        return cls(sorted(words), ids.item_id_list(), [""] + texts, max_history)

    def word_ids(self, texts) -> list:
        """Word ids of each text (0 for words outside the vocabulary), as lists."""
        return [list(row) for row in self._lookup_words(texts).to_list()]

    def _lookup_words(self, texts) -> tf.RaggedTensor:
        split = self.split_words(texts)
        return tf.ragged.map_flat_values(
            lambda w: tf.cast(self.word_table.lookup(w), tf.int32), split)

    def _query_words(self, query):
        words = self._lookup_words(query)[:, : self.max_query_words]
        return words.to_tensor(default_value=0, shape=[None, self.max_query_words])

    #: The table's text columns :meth:`features` reads.
    text_columns = ("query",)

    def features(self, batch: dict) -> dict:
        """Model inputs from a batch of table columns (``item_index``, ``history_index``,
        ``query``); runs inside tf.data."""
        table = tf.constant(self.item_words)
        item = tf.cast(batch["item_index"], tf.int32)
        return {"item_index": item, "candidate_words": tf.gather(table, item),
                "history_words": tf.gather(table, tf.cast(batch["history_index"], tf.int32)),
                "query_words": self._query_words(batch["query"])}

    def index_table(self) -> "tf.lookup.StaticHashTable":
        """Item id string -> catalogue index (0 for unknown ids)."""
        return tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.item_ids[1:]),
                tf.range(1, len(self.item_ids), dtype=tf.int64)), default_value=0)

    def from_ids(self, query, history_ids, item_ids, index_table=None) -> dict:
        """Model inputs from raw strings: ``query`` ``[b]``, ``history_ids`` ``[b, any]``
        (most recent first, "" = padding; cut to H) and ``item_ids`` ``[b]``; unknown ids
        read as no item. What the SavedModel's signatures run."""
        table = index_table if index_table is not None else self.index_table()
        history_ids = tf.convert_to_tensor(history_ids, tf.string)[:, : self.max_history]
        missing = self.max_history - tf.shape(history_ids)[1]
        history_ids = tf.pad(history_ids, [[0, 0], [0, missing]], constant_values="")
        return self.features({
            "item_index": tf.cast(table.lookup(tf.convert_to_tensor(item_ids, tf.string)),
                                  tf.int32),
            "history_index": tf.cast(table.lookup(history_ids), tf.int32),
            "query": tf.convert_to_tensor(query, tf.string)})


@register("glass_box")
class GlassBox(ModelKind):
    """A logistic regression over named word and item features (models/glass_box.py)."""

    description = ("glass box: logistic regression over named words and item features; "
                   "its contributions are the explanation")
    benchmark_overrides = None  # a distillation student, not a quality row
    exact_contributions = True

    def featurizer(self, cfg, vocabulary, catalogue, ids, cache_dir=None):
        return GlassBoxFeatures.build(catalogue, ids, cfg.data.item_text_fields,
                                      cfg.data.max_history)

    def featurizer_state(self, featurizer):
        return {"words": featurizer.words, "item_ids": featurizer.item_ids,
                "item_texts": featurizer.item_texts}

    def load_featurizer(self, cfg, vocabulary, state):
        return GlassBoxFeatures(state["words"], state["item_ids"], state["item_texts"],
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

    def serving_request(self, featurizer, table):
        ids = np.asarray(featurizer.item_ids, dtype=object)
        query = table.query if table.query is not None else np.full(len(table), "", object)
        return {"query": tf.constant(np.asarray(query, dtype=object).astype(str)),
                "history_ids": tf.constant(ids[table.history_index].astype(str)),
                "item_id": tf.constant(ids[table.item_index].astype(str))}

    def add_serving_endpoints(self, archive, model, featurizer, item_index=None):
        _serving_endpoints(archive, model, featurizer)


def _serving_endpoints(archive: keras.export.ExportArchive, model, features) -> None:
    """The glass-box signatures of trainer/serving/export.py's docstring."""
    index_table = features.index_table()
    archive.track(index_table)
    archive.track(features.word_table)
    words = tf.constant([""] + features.words)
    names = tf.constant(list(ITEM_FEATURES))

    def serve(query, history_ids, item_id):
        return endpoints.outputs(model(features.from_ids(query, history_ids, item_id, index_table),
                              training=False))

    def explain(query, history_ids, item_id):
        x = features.from_ids(query, history_ids, item_id, index_table)
        parts = model.contributions(x)
        return {"words": tf.gather(words, x["candidate_words"]),
                "word_contributions": parts["word_contributions"],
                "item_feature_names": names,
                "item_contributions": parts["item_contributions"],
                "bias": parts["bias"], "logit": parts["logit"]}

    signature = [tf.TensorSpec([None], tf.string, name="query"),
                 tf.TensorSpec([None, None], tf.string, name="history_ids"),
                 tf.TensorSpec([None], tf.string, name="item_id")]
    archive.add_endpoint("serving_default", serve, input_signature=signature)
    archive.add_endpoint("explain", explain, input_signature=signature)
