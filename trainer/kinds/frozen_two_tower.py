"""The ``frozen_two_tower`` kind: the two-tower model over *frozen pretrained text vectors*.

A pretrained checkpoint (``model.pretrained``: a local Hugging Face directory such as
all-MiniLM-L6-v2, a keras-hub preset or an ``hf://`` handle) encodes every catalogue text
once; the vectors are cached (trainer/kinds/text_vectors.py: the run directory, keyed by a
fingerprint of checkpoint and texts) and held by the model as a frozen table. A trainable
adapter (``model.adapter``: linear, whitening or UniSRec's mixture of whitening experts)
maps them to the item space, plus an item-id embedding with ``model.item_ids``; the user
transformer and the losses are the two-tower model's (models/two_tower.py). A training step
costs what an id-only step costs plus the adapter, and ``train.loss: full_softmax`` (every
catalogue item a negative) is open to it.

Fine-tuning the top layers (``model.text_trainable_layers`` = k > 0): the cache holds each
text's word-piece states below the checkpoint's top k layers (computed once), and the model
trains copies of those k layers, initialised from the checkpoint, before pooling and the
adapter (``TokenStatesAdapter``). Each step runs k layers over every distinct text it
reads, every catalogue text with ``full_softmax``: work for an accelerator, measured on
CPU in docs/benchmarks.md. Serving is as below, with states in place of vectors: a new
text goes through the frozen lower layers in the SavedModel and the trained top layers in
the model.

Serving: the exported signatures take raw strings, as every two-tower export does. A text
of the catalogue reads its cached vector (a string lookup); any other text (a new item, an
edited title) is encoded by the frozen checkpoint, which the SavedModel carries. So a
request about catalogue items costs no encoder pass, and a cold-start item is scored from
its text alone, exactly as an item training never saw is at evaluation.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import numpy as np
import tensorflow as tf

from bert_recommender.explainability.two_tower_scorer import FrozenTextView, TwoTowerScorer
from bert_recommender.models.pretrained_text import PretrainedTextEncoder
from bert_recommender.models.two_tower import TwoTowerRecommender
from trainer.errors import ConfigError
from trainer.kind_registry import register
from trainer.kinds.text_vectors import cached_text_vectors
from trainer.kinds.two_tower import TwoTower, TwoTowerFeatures

log = logging.getLogger(__name__)


class FrozenTextFeatures(TwoTowerFeatures):
    """Two-tower inputs for frozen text vectors: ``item_text_index`` /
    ``history_text_index`` (rows of the model's text table, which lays the catalogue out in
    ``IdVocabulary`` order, so a row is the item's catalogue index) beside the id features.

    Args:
      item_ids / item_texts / trained_mask / max_history: as :class:`TwoTowerFeatures`.
      pretrained / max_tokens / pooling: the frozen checkpoint and how it encodes a text
        (what serving encodes texts outside the catalogue with).
      trainable_layers: the checkpoint's top layers the model trains (0: none; else the
        table holds the states below them).
      text_vectors: the catalogue texts' vectors ``[N + 1, D]`` (training builds the model's
        table from them); None for a finished run, whose model holds them.
      encoding: what ``cached_text_vectors`` reported (fingerprint, seconds, reused).
    """

    def __init__(self, item_ids: list, item_texts: list, trained_mask: np.ndarray,
                 max_history: int, pretrained: str, max_tokens: int, pooling: str,
                 text_vectors: np.ndarray | None = None, encoding: dict | None = None,
                 trainable_layers: int = 0):
        super().__init__(None, item_ids, item_texts, trained_mask, max_history)
        self.pretrained, self.max_tokens, self.pooling = pretrained, max_tokens, pooling
        self.trainable_layers = int(trainable_layers)
        self.text_vectors = text_vectors
        self.encoding = dict(encoding or {})

    @functools.cached_property
    def encoder(self) -> PretrainedTextEncoder:
        """The frozen checkpoint, loaded on first use (serving texts outside the catalogue)."""
        return PretrainedTextEncoder.from_pretrained(self.pretrained, self.max_tokens,
                                                     self.pooling, self.trainable_layers)

    def features(self, batch: dict) -> dict:
        # Not super(): autograph (tf.data) cannot convert its closure.
        out = TwoTowerFeatures.features(self, batch)
        out["item_text_index"] = tf.cast(batch["item_index"], tf.int32)
        out["history_text_index"] = tf.cast(batch["history_index"], tf.int32)
        return out

    def track_for_serving(self, archive) -> dict:
        """:meth:`TwoTowerFeatures.track_for_serving`, plus the text -> row table and the
        frozen checkpoint that encodes texts outside the catalogue."""
        tables = super().track_for_serving(archive)
        tables["row_table"] = self.text_row_table()
        archive.track(tables["row_table"])
        self.encoder(tf.constant(["a"]))  # builds the tokenizer layer, which track() needs
        archive.track(self.encoder.backbone)
        archive.track(self.encoder.tokenizer)
        return tables

    def text_row_table(self) -> "tf.lookup.StaticHashTable":
        """Item text -> its row of the text table (0 for texts outside the catalogue; of
        items sharing a text, the first)."""
        first = {}
        for row, text in enumerate(self.item_texts[1:], start=1):
            first.setdefault(text, row)
        return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(first), tf.string), tf.constant(list(first.values()), tf.int64)),
            default_value=0)

    def from_text(self, query, history_texts, item_texts, history_ids=None, item_ids=None,
                  index_table=None, row_table=None) -> dict:
        """:meth:`TwoTowerFeatures.from_text` for frozen text vectors: catalogue texts
        become their table rows; the distinct other texts are encoded by the frozen
        checkpoint into ``extra_text_vectors`` (rows past the table). The query is not
        read (the kind trains without one)."""
        out = super().from_text(query, history_texts, item_texts, history_ids, item_ids,
                                index_table)
        history_texts = self.fit_history(tf.convert_to_tensor(history_texts, tf.string))
        item_texts = tf.convert_to_tensor(item_texts, tf.string)
        flat = tf.concat([tf.reshape(history_texts, [-1]), item_texts], axis=0)
        table = row_table if row_table is not None else self.text_row_table()
        rows = tf.cast(table.lookup(flat), tf.int32)
        unseen = tf.logical_and(tf.equal(rows, 0), tf.not_equal(flat, ""))
        distinct, position = tf.unique(tf.boolean_mask(flat, unseen))
        table_rows = len(self.item_texts)
        rows = tf.tensor_scatter_nd_update(rows, tf.where(unseen),
                                           table_rows + tf.cast(position, tf.int32))
        split = tf.size(history_texts)
        out["history_text_index"] = tf.reshape(rows[:split], tf.shape(history_texts))
        out["item_text_index"] = rows[split:]
        if tf.executing_eagerly() and int(tf.size(distinct)) == 0:
            return out  # every text is in the catalogue: no checkpoint to load
        out["extra_text_vectors"] = self.encoder(distinct)
        return out


@register("frozen_two_tower")
class FrozenTwoTower(TwoTower):
    """The two-tower model over frozen pretrained text vectors through a trainable adapter
    (+ item ids); see the module docstring."""

    description = ("two-tower over frozen pretrained text vectors (encoded once, cached) "
                   "through a trainable adapter (+ item ids), user transformer")
    uses_text = False  # no tokenizer of its own: the checkpoint's tokenizes
    explains_words = True  # through the frozen checkpoint (FrozenTextView)
    # The checkpoint is the user's to name (benchmarks/quality.py --set_for).
    benchmark_overrides = None

    def check_config(self, cfg):
        super().check_config(cfg)
        m = cfg.model
        if not m.pretrained:
            raise ConfigError("config key 'model.pretrained': model.kind=frozen_two_tower "
                              "encodes the catalogue's texts with a pretrained checkpoint; set "
                              "it to a local Hugging Face directory (config.json, "
                              "model.safetensors, vocab.txt), a keras-hub preset or an hf:// "
                              "handle")
        if m.adapter_experts <= 0:
            raise ConfigError(f"config key 'model.adapter_experts' must be > 0, got "
                              f"{m.adapter_experts}")
        if not 0.0 <= m.adapter_dropout < 1.0:
            raise ConfigError(f"config key 'model.adapter_dropout' must be in [0, 1), got "
                              f"{m.adapter_dropout}")
        if m.text_trainable_layers < 0:
            raise ConfigError(f"config key 'model.text_trainable_layers' must be >= 0 (the "
                              f"checkpoint's top layers to fine-tune), got "
                              f"{m.text_trainable_layers}")
        if m.text_trainable_layers and m.pooling == "cls":
            raise ConfigError("config key 'model.pooling': 'cls' reads the checkpoint's "
                              "pooler, which model.text_trainable_layers > 0 does not train; "
                              "use mean or first")
        layers = _checkpoint_layers(m.pretrained) if m.text_trainable_layers else None
        if layers is not None and m.text_trainable_layers > layers:
            raise ConfigError(f"config key 'model.text_trainable_layers' "
                              f"({m.text_trainable_layers}) is more than the {layers} "
                              f"transformer layers of {m.pretrained}")
        if m.hidden_dim <= 0 or m.hidden_dim % m.user_heads:
            raise ConfigError(f"config key 'model.hidden_dim' ({m.hidden_dim}), the item "
                              f"vector size, must be > 0 and divisible by 'model.user_heads' "
                              f"({m.user_heads})")

    def benchmark_settings(self, cfg):
        m = cfg.model
        return {**super().benchmark_settings(cfg), "pretrained": m.pretrained,
                "pooling": m.pooling, "item_max_tokens": cfg.data.item_max_tokens,
                "adapter": m.adapter, "embedding_dim": m.hidden_dim,
                "text_trainable_layers": m.text_trainable_layers,
                **({"adapter_experts": m.adapter_experts} if m.adapter == "moe" else {})}

    def featurizer(self, cfg, vocabulary, catalogue, ids, cache_dir=None):
        item_texts = ids.item_texts(catalogue, cfg.data.item_text_fields)
        vectors, encoding = cached_text_vectors(
            item_texts[1:], cfg.model.pretrained, cfg.data.item_max_tokens, cfg.model.pooling,
            cache_dir=cache_dir, trainable_layers=cfg.model.text_trainable_layers)
        table = np.concatenate([np.zeros([1, vectors.shape[1]], np.float32), vectors])
        return FrozenTextFeatures(ids.item_id_list(), item_texts, ids.trained_item_mask(),
                                  cfg.data.max_history, cfg.model.pretrained,
                                  cfg.data.item_max_tokens, cfg.model.pooling,
                                  text_vectors=table, encoding=encoding,
                                  trainable_layers=cfg.model.text_trainable_layers)

    def featurizer_settings(self, featurizer):
        encoding = featurizer.encoding
        return {"text_encoding_seconds": encoding.get("encode_seconds"),
                "text_vectors_reused": encoding.get("reused"),
                "text_vectors_fingerprint": encoding.get("fingerprint")}

    def featurizer_state(self, featurizer):
        return {**super().featurizer_state(featurizer), "encoding": featurizer.encoding}

    def load_featurizer(self, cfg, vocabulary, state):
        trained = np.zeros(len(state["item_ids"]), bool)
        trained[np.asarray(state["trained"], np.int64)] = True
        return FrozenTextFeatures(state["item_ids"], state["item_texts"], trained,
                                  cfg.data.max_history, cfg.model.pretrained,
                                  cfg.data.item_max_tokens, cfg.model.pooling,
                                  encoding=state.get("encoding"),
                                  trainable_layers=cfg.model.text_trainable_layers)

    def build(self, cfg, featurizer, ids, train_table):
        m = cfg.model
        table = featurizer.text_vectors
        top = featurizer.encoder.top_layers if m.text_trainable_layers else []
        model = TwoTowerRecommender(
            None, num_items=len(ids.items) if m.item_ids else 0,
            max_history=cfg.data.max_history, embedding_dim=m.hidden_dim,
            user_layers=m.user_layers, user_heads=m.user_heads, user_pooling=m.user_pooling,
            similarity=m.similarity, temperature=m.temperature,
            user_intermediate_dim=m.intermediate_dim, dropout=m.dropout, loss=cfg.train.loss,
            max_interest=m.max_interest, catalogue_size=len(ids.items),
            text_vectors_shape=table.shape, adapter=m.adapter,
            adapter_experts=m.adapter_experts, adapter_dropout=m.adapter_dropout,
            deduplicate_items=self.deduplicates(cfg), pooling=m.pooling,
            text_top_layers=[layer.get_config() for layer in top],
            text_tokens=cfg.data.item_max_tokens)
        if top:
            model.text_adapter.build(table.shape)
            model.text_adapter.initialize_from(top)
        model.set_text_vectors(table)
        model.set_trained_items(ids.trained_item_mask())
        return model

    def dummy_batch(self, featurizer):
        return {"user_index": tf.zeros([1], tf.int32), "item_index": tf.zeros([1], tf.int32),
                "history_index": tf.zeros([1, featurizer.max_history], tf.int32),
                "item_text_index": tf.zeros([1], tf.int32),
                "history_text_index": tf.zeros([1, featurizer.max_history], tf.int32)}

    def training_rows(self, cfg, table):
        if table.query is not None and np.any(np.asarray(table.query, dtype=object) != ""):
            log.warning("model.kind=frozen_two_tower reads no query (only catalogue texts "
                        "are encoded): this data's queries are left out; two_tower's text "
                        "encoder reads them")
        return super().training_rows(cfg, table)

    def explanation_scorer(self, cfg, model, featurizer):
        # Words are explained through the checkpoint that wrote the text table: the view
        # re-encodes each packed row's texts from their word-piece embeddings.
        encoder = featurizer.encoder
        scorer = TwoTowerScorer(FrozenTextView(model, encoder), featurizer,
                                batch_size=cfg.train.eval_batch_size,
                                tokenizer=encoder.tokenizer)
        scorer.target = self.explained_target(cfg)
        return scorer, scorer.compose

    def add_token_endpoints(self, archive, model, featurizer, item_index=None):
        return None  # no tokenizer of its own: the raw-string export is the only one


def _checkpoint_layers(pretrained: str):
    """The transformer layers of a local checkpoint directory, read from its config.json
    (Hugging Face's ``num_hidden_layers``, or a keras-hub preset's ``config.num_layers``),
    or None where that cannot be read without loading it (a preset name, a hub handle)."""
    path = os.path.join(pretrained, "config.json")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        config = json.load(f)
    layers = config.get("num_hidden_layers") or (config.get("config") or {}).get("num_layers")
    return int(layers) if layers else None
