"""One vector per text from a frozen pretrained BERT: what a frozen-text item tower reads.

With ``trainable_layers`` > 0 the encoder stops below its top layers and gives each text's
word-piece states instead (flattened, padding zeroed): the model trains those top layers
itself (``models/layers/text_adapter.py``, ``TokenStatesAdapter``) over states computed
once."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras import ops

from bert_recommender.models.bert_recommender import (POOLING, BERTRecommender,
                                                      backbone_from_token_embeddings,
                                                      pool_tokens)
from bert_recommender.models.layers.item_text_tokenizer import ItemTextTokenizer


class PretrainedTextEncoder:
    """A pretrained BERT checkpoint, frozen, that turns texts into pooled vectors ``[n, D]``.

    Each text is tokenized on its own (``[CLS] text [SEP]``, cut to ``max_tokens``) and
    pooled as ``pooling`` says: ``mean`` over its word pieces ([CLS] and [SEP] included,
    as sentence-transformers pools), ``first`` (the [CLS] vector) or ``cls`` (the
    checkpoint's pooler). An empty text is a zero vector. The encoder never trains: a
    catalogue is encoded once (:meth:`encode`, cached by the training library) and
    only texts outside it are encoded at serving time (:meth:`__call__`, in the graph).

    With ``trainable_layers`` = k > 0 a text's *features* are not its pooled vector but
    the word-piece states below the top k transformer layers, ``[max_tokens, D]``
    flattened to ``max_tokens * D`` with padding positions zero: what a model that
    fine-tunes those k layers reads (``TokenStatesAdapter``), so the lower layers run
    once per text, not once per step.

    Args:
      backbone: a keras-hub ``BertBackbone``.
      tokenizer: its keras-hub ``BertTokenizer``.
      max_tokens: word pieces per text, [CLS] and [SEP] included.
      pooling: one of ``POOLING``.
      trainable_layers: the top transformer layers left to the model (0: pooled vectors).
    """

    def __init__(self, backbone, tokenizer, max_tokens: int, pooling: str = "mean",
                 trainable_layers: int = 0):
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        layers = len(backbone.transformer_layers)
        if not 0 <= trainable_layers <= layers:
            raise ValueError(f"trainable_layers must be in [0, {layers}] (the checkpoint's "
                             f"transformer layers), got {trainable_layers}")
        if trainable_layers and pooling == "cls":
            raise ValueError("pooling='cls' reads the checkpoint's pooler, which a model "
                             "fine-tuning the top layers does not hold: use mean or first")
        self.backbone = backbone
        self.backbone.trainable = False
        self.tokenizer = ItemTextTokenizer(tokenizer, max_tokens)
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.trainable_layers = int(trainable_layers)

    @classmethod
    def from_pretrained(cls, preset: str, max_tokens: int, pooling: str = "mean",
                        trainable_layers: int = 0) -> "PretrainedTextEncoder":
        """From a local Hugging Face directory, a keras-hub preset name or an
        ``hf://org/name`` handle (the last two need network access)."""
        import keras_hub  # pylint: disable=import-outside-toplevel

        return cls(BERTRecommender.load_backbone(preset),
                   keras_hub.tokenizers.BertTokenizer.from_preset(preset), max_tokens, pooling,
                   trainable_layers)

    @property
    def dim(self) -> int:
        """D, the checkpoint's hidden size (of a pooled vector and of a word-piece state)."""
        return self.backbone.hidden_dim

    @property
    def feature_dim(self) -> int:
        """The size of a text's features: D, or ``max_tokens * D`` with trainable layers."""
        return self.dim * (self.max_tokens if self.trainable_layers else 1)

    @property
    def frozen_layers(self) -> int:
        """The transformer layers this encoder runs below the model's trainable ones."""
        return len(self.backbone.transformer_layers) - self.trainable_layers

    @property
    def top_layers(self) -> list:
        """The checkpoint's top ``trainable_layers`` transformer layers (their initial
        weights, which the model copies and trains)."""
        return list(self.backbone.transformer_layers[self.frozen_layers:])

    def vectors_from_tokens(self, token_ids):
        """Features ``[n, feature_dim]`` of token rows ``[n, L]`` (any L up to
        ``max_tokens``): pooled vectors, or the states below the trainable layers."""
        token_ids = ops.cast(token_ids, "int32")
        mask = ops.cast(ops.not_equal(token_ids, 0), "int32")
        if self.trainable_layers:
            sequence, _ = backbone_from_token_embeddings(
                self.backbone, self.backbone.token_embedding(token_ids),
                ops.zeros_like(token_ids), mask, num_layers=self.frozen_layers)
            return self.features(sequence, token_ids)
        out = self.backbone({"token_ids": token_ids, "segment_ids": ops.zeros_like(token_ids),
                             "padding_mask": mask}, training=False)
        return self.pool(out["sequence_output"], token_ids, out["pooled_output"])

    def features(self, sequence_output, token_ids):
        """The features ``[n, feature_dim]`` of texts from the states ``[n, L, D]`` that
        :attr:`frozen_layers` layers give for ``token_ids`` ``[n, L]``: pooled
        (:meth:`pool`), or padded to ``max_tokens``, padding zeroed, flattened."""
        if not self.trainable_layers:
            return self.pool(sequence_output, token_ids)
        token_ids = ops.cast(token_ids, "int32")
        present = ops.expand_dims(ops.cast(ops.not_equal(token_ids, 0), "float32"), -1)
        states = ops.cast(sequence_output, "float32") * present
        width = ops.shape(states)[1]
        states = ops.pad(states, [[0, 0], [0, self.max_tokens - width], [0, 0]])
        return ops.reshape(states, (-1, self.feature_dim))

    def pool(self, sequence_output, token_ids, pooled_output=None):
        """The vectors ``[n, D]`` of the backbone's ``sequence_output`` ``[n, L, D]`` for
        ``token_ids`` ``[n, L]``, pooled as ``pooling`` says (``cls`` applies the
        checkpoint's pooler when ``pooled_output`` is not given). Explanations call it on
        a sequence computed from word-piece embeddings."""
        token_ids = ops.cast(token_ids, "int32")
        if self.pooling == "cls":
            pooled = (pooled_output if pooled_output is not None
                      else self.backbone.pooled_dense(sequence_output[:, 0, :]))
        else:
            pooled = pool_tokens(sequence_output, ops.not_equal(token_ids, 0), self.pooling)
        present = ops.cast(ops.any(ops.not_equal(token_ids, 0), axis=-1, keepdims=True),
                           pooled.dtype)
        return ops.cast(pooled * present, "float32")

    def __call__(self, texts):
        """Vectors ``[n, D]`` of a string tensor ``[n]`` (TensorFlow; what a SavedModel
        runs for texts it has no cached vector of)."""
        return self.vectors_from_tokens(self.tokenizer(tf.convert_to_tensor(texts, tf.string)))

    def encode(self, texts: list, batch_size: int = 128) -> np.ndarray:
        """Features ``[len(texts), feature_dim]`` (float32) of a list of strings, in
        batches.

        Texts are batched by length and each batch is cut to its longest text, so a
        catalogue of short titles costs what its titles' length costs, not
        ``max_tokens``; padding never changes a vector (the attention and the pooling
        mask it)."""
        tokens = np.concatenate(
            [np.asarray(self.tokenizer(tf.constant(list(texts[i:i + 4096]), tf.string)))
             for i in range(0, len(texts), 4096)]) if len(texts) else np.zeros(
                 [0, self.max_tokens], np.int32)
        lengths = (tokens != 0).sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros([len(texts), self.feature_dim], np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(1, int(lengths[rows].max()))
            out[rows] = np.asarray(self.vectors_from_tokens(tokens[rows, :width]))
        return out

