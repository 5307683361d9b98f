"""One vector per text from a frozen pretrained BERT: what a frozen-text item tower reads."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras import ops

from bert_recommender.models.bert_recommender import POOLING, BERTRecommender
from bert_recommender.models.layers.item_text_tokenizer import ItemTextTokenizer


class PretrainedTextEncoder:
    """A pretrained BERT checkpoint, frozen, that turns texts into pooled vectors ``[n, D]``.

    Each text is tokenized on its own (``[CLS] text [SEP]``, cut to ``max_tokens``) and
    pooled as ``pooling`` says: ``mean`` over its word pieces ([CLS] and [SEP] included,
    as sentence-transformers pools), ``first`` (the [CLS] vector) or ``cls`` (the
    checkpoint's pooler). An empty text is a zero vector. The encoder never trains: a
    catalogue is encoded once (:meth:`encode`, cached by the training library) and
    only texts outside it are encoded at serving time (:meth:`__call__`, in the graph).

    Args:
      backbone: a keras-hub ``BertBackbone``.
      tokenizer: its keras-hub ``BertTokenizer``.
      max_tokens: word pieces per text, [CLS] and [SEP] included.
      pooling: one of ``POOLING``.
    """

    def __init__(self, backbone, tokenizer, max_tokens: int, pooling: str = "mean"):
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        self.backbone = backbone
        self.backbone.trainable = False
        self.tokenizer = ItemTextTokenizer(tokenizer, max_tokens)
        self.max_tokens = max_tokens
        self.pooling = pooling

    @classmethod
    def from_pretrained(cls, preset: str, max_tokens: int,
                        pooling: str = "mean") -> "PretrainedTextEncoder":
        """From a local Hugging Face directory, a keras-hub preset name or an
        ``hf://org/name`` handle (the last two need network access)."""
        import keras_hub  # pylint: disable=import-outside-toplevel

        return cls(BERTRecommender.load_backbone(preset),
                   keras_hub.tokenizers.BertTokenizer.from_preset(preset), max_tokens, pooling)

    @property
    def dim(self) -> int:
        """D, the size of the vectors."""
        return self.backbone.hidden_dim

    def vectors_from_tokens(self, token_ids):
        """Pooled vectors ``[n, D]`` of token rows ``[n, L]`` (any L up to ``max_tokens``)."""
        token_ids = ops.cast(token_ids, "int32")
        mask = ops.cast(ops.not_equal(token_ids, 0), "int32")
        out = self.backbone({"token_ids": token_ids, "segment_ids": ops.zeros_like(token_ids),
                             "padding_mask": mask}, training=False)
        return self.pool(out["sequence_output"], token_ids, out["pooled_output"])

    def pool(self, sequence_output, token_ids, pooled_output=None):
        """The vectors ``[n, D]`` of the backbone's ``sequence_output`` ``[n, L, D]`` for
        ``token_ids`` ``[n, L]``, pooled as ``pooling`` says (``cls`` applies the
        checkpoint's pooler when ``pooled_output`` is not given). Explanations call it on
        a sequence computed from word-piece embeddings."""
        token_ids = ops.cast(token_ids, "int32")
        if self.pooling == "cls":
            pooled = (pooled_output if pooled_output is not None
                      else self.backbone.pooled_dense(sequence_output[:, 0, :]))
        elif self.pooling == "first":
            pooled = sequence_output[:, 0, :]
        else:
            mask = ops.cast(ops.not_equal(token_ids, 0), "int32")
            weights = ops.expand_dims(ops.cast(mask, sequence_output.dtype), -1)
            pooled = ops.sum(sequence_output * weights, axis=1) / ops.maximum(
                ops.sum(weights, axis=1), 1.0)
        present = ops.cast(ops.any(ops.not_equal(token_ids, 0), axis=-1, keepdims=True),
                           pooled.dtype)
        return ops.cast(pooled * present, "float32")

    def __call__(self, texts):
        """Vectors ``[n, D]`` of a string tensor ``[n]`` (TensorFlow; what a SavedModel
        runs for texts it has no cached vector of)."""
        return self.vectors_from_tokens(self.tokenizer(tf.convert_to_tensor(texts, tf.string)))

    def encode(self, texts: list, batch_size: int = 128) -> np.ndarray:
        """Vectors ``[len(texts), D]`` (float32) of a list of strings, in batches.

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
        out = np.zeros([len(texts), self.dim], np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(1, int(lengths[rows].max()))
            out[rows] = np.asarray(self.vectors_from_tokens(tokens[rows, :width]))
        return out

