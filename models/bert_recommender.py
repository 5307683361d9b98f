"""BERTRecommender: a BERT cross-encoder over "user side [SEP] item side" with a click head."""

from __future__ import annotations

import os

import keras
import keras_hub
from keras import ops

from bert_recommender.models.layers.pre_ln_bert_backbone import PreLNBertBackbone

# cls: BERT's pooler, tanh(dense([CLS])); first: the [CLS] vector itself; mean: the mean of
# the non-padding token vectors.
POOLING = ("cls", "first", "mean")


def pool_tokens(sequence_output, padding_mask, pooling: str):
    """One vector per row ``[n, D]`` of token states ``[n, L, D]``: the first ([CLS])
    state for ``first``, else the mean over the positions ``padding_mask`` ``[n, L]``
    keeps (a row with none kept gives zeros). ``cls`` needs the checkpoint's pooler: its
    callers apply it themselves."""
    if pooling == "first":
        return sequence_output[:, 0, :]
    weights = ops.expand_dims(ops.cast(padding_mask, sequence_output.dtype), -1)
    return ops.sum(sequence_output * weights, axis=1) / ops.maximum(
        ops.sum(weights, axis=1), 1.0)


def backbone_from_token_embeddings(backbone, token_embeddings, segment_ids, padding_mask,
                                   training=False, return_attention_scores=False,
                                   num_layers=None):
    """A keras-hub BERT backbone's ``sequence_output`` from word-piece embeddings instead
    of ids: its sub-layers in the order its functional graph runs them (token + position +
    segment embeddings -> LayerNorm -> dropout -> transformer layers). Attribution methods
    interpolate and differentiate the embeddings. Returns ``(sequence_output,
    attention_scores)``; the scores (per layer, ``[batch, heads, seq, seq]``) only with
    ``return_attention_scores``, else an empty list. ``num_layers`` stops after that many
    transformer layers (default: all)."""
    x = backbone.embeddings_add((token_embeddings,
                                 backbone.position_embedding(token_embeddings),
                                 backbone.segment_embedding(segment_ids)))
    x = backbone.embeddings_dropout(backbone.embeddings_layer_norm(x), training=training)
    attention_scores = []
    layers = backbone.transformer_layers
    for layer in layers[:len(layers) if num_layers is None else num_layers]:
        if return_attention_scores:
            x, scores = layer(x, padding_mask=padding_mask, training=training,
                              return_attention_scores=True)
            attention_scores.append(scores)
        else:
            x = layer(x, padding_mask=padding_mask, training=training)
    return x, attention_scores


@keras.saving.register_keras_serializable(package="bert_recommender")
class BERTRecommender(keras.Model):
    """keras-hub ``BertBackbone`` + dropout + ``Dense(1)`` click head.

    ``call`` returns the click *logit* (shape ``[batch]``); train it with from-logits binary
    cross-entropy, which is numerically stable. :meth:`click_probability` is the sigmoid of
    the logit: the quantity that is served and explained.

    Inputs are a dict of int32 ``token_ids`` and ``segment_ids`` (``[batch, seq]``); the
    padding mask is derived here (``token_ids != 0``) because a bool tensor in the input
    dict breaks tf.distribute strategies under Keras 3 (see docs/design.md).

    Example:
        >>> model = BERTRecommender.from_sizes(vocabulary_size=100, num_layers=1,
        ...                                    num_heads=2, hidden_dim=16, intermediate_dim=32)
        >>> logits = model({"token_ids": ids, "segment_ids": segments})
    """

    def __init__(self, backbone: keras_hub.models.BertBackbone, dropout: float = 0.1,
                 pooling: str = "cls", **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        self.backbone = backbone
        self.dropout = dropout
        self.pooling = pooling
        if pooling != "cls":
            # The [CLS] pooler is unused; freezing it keeps it out of the optimizer, which
            # would otherwise see variables without gradients.
            backbone.pooled_dense.trainable = False
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        # float32 under mixed precision too: the logit feeds the loss and the served score.
        self.click_head = keras.layers.Dense(
            1, kernel_initializer="glorot_uniform", dtype="float32", name="click_head")

    @classmethod
    def from_sizes(cls, vocabulary_size: int, num_layers: int, num_heads: int, hidden_dim: int,
                   intermediate_dim: int, dropout: float = 0.1, head_dropout: float = 0.1,
                   max_sequence_length: int = 128, pooling: str = "cls",
                   normalize_first: bool = False, **kwargs) -> "BERTRecommender":
        """A randomly initialised backbone of the given sizes.

        ``normalize_first=False`` gives keras-hub's ``BertBackbone`` (post-LN, the
        architecture of pretrained BERT checkpoints); True gives :class:`PreLNBertBackbone`,
        which learns far faster from scratch.
        """
        backbone_cls = PreLNBertBackbone if normalize_first else keras_hub.models.BertBackbone
        backbone = backbone_cls(
            vocabulary_size=vocabulary_size, num_layers=num_layers, num_heads=num_heads,
            hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, dropout=dropout,
            max_sequence_length=max_sequence_length)
        return cls(backbone, dropout=head_dropout, pooling=pooling, **kwargs)

    @classmethod
    def from_pretrained(cls, preset: str, head_dropout: float = 0.1, pooling: str = "cls",
                        **kwargs) -> "BERTRecommender":
        """A backbone loaded from a local Hugging Face directory, a keras-hub preset name,
        or an ``hf://org/name`` handle (the last two need network access)."""
        return cls(cls.load_backbone(preset), dropout=head_dropout, pooling=pooling, **kwargs)

    @staticmethod
    def load_backbone(preset: str) -> keras_hub.models.BertBackbone:
        """A pretrained ``BertBackbone`` from a local Hugging Face directory, a keras-hub
        preset name, or an ``hf://org/name`` handle (the last two need network access)."""
        if os.path.isdir(preset) and not os.path.exists(os.path.join(preset, "config.json")):
            raise ValueError(f"{preset}: not a Hugging Face/keras-hub model directory (no "
                             "config.json); set model.pretrained to a directory with "
                             "config.json, model.safetensors and vocab.txt")
        return keras_hub.models.BertBackbone.from_preset(preset)

    def call(self, inputs, training=False):
        pooled = self.head_dropout(self.pooled_output(inputs, training=training),
                                   training=training)
        return ops.squeeze(self.click_head(pooled), axis=-1)

    def pooled_output(self, inputs, training=False):
        """The vector the click head sees: the backbone's output pooled as ``pooling``
        says (``[batch, hidden_dim]``), before the head's dropout and ``Dense(1)``.

        ``call`` is ``click_head(head_dropout(pooled_output(x)))``, so at inference (dropout
        off) the logit is ``click_head(pooled_output(x))``; ``trainer/evaluation/run_reports.py`` uses
        it as an item embedding.
        """
        token_ids = inputs["token_ids"]
        padding_mask = self.padding_mask(token_ids)
        outputs = self.backbone({"token_ids": token_ids, "segment_ids": inputs["segment_ids"],
                                 "padding_mask": padding_mask}, training=training)
        return self._pool(outputs["sequence_output"], outputs["pooled_output"], padding_mask)

    @staticmethod
    def padding_mask(token_ids):
        """1 for real tokens, 0 for [PAD] (id 0), as int32 (see the class docstring)."""
        return ops.cast(ops.not_equal(token_ids, 0), "int32")

    def token_embeddings(self, token_ids):
        """The backbone's word-piece embeddings of ``token_ids``: what attribution methods
        interpolate and differentiate (positions and segments are added after them)."""
        return self.backbone.token_embedding(token_ids)

    def logit_from_token_embeddings(self, token_embeddings, segment_ids, padding_mask,
                                    training=False, return_attention_scores=False):
        """The click logit computed from word-piece embeddings instead of ids.

        Runs the backbone's sub-layers in the order its functional graph does (token
        embeddings + position + segment embeddings -> LayerNorm -> dropout -> transformer
        layers -> pooling -> head), so ``logit_from_token_embeddings(token_embeddings(ids),
        ...)`` equals ``call`` up to float round-off (tests/models check it). With
        ``return_attention_scores`` it returns ``(logit, [per-layer scores of shape
        [batch, heads, seq, seq]])`` for attention rollout.
        """
        backbone = self.backbone
        x, attention_scores = backbone_from_token_embeddings(
            backbone, token_embeddings, segment_ids, padding_mask, training,
            return_attention_scores)
        pooled_output = backbone.pooled_dense(x[:, 0, :]) if self.pooling == "cls" else None
        logit = self._logit(x, pooled_output, padding_mask, training)
        return (logit, attention_scores) if return_attention_scores else logit

    def _pool(self, sequence_output, pooled_output, padding_mask):
        if self.pooling == "cls":
            # pooled_output (tanh(dense(CLS))) keeps the backbone's pooled_dense trained.
            return pooled_output
        if self.pooling == "first":
            return sequence_output[:, 0, :]
        mask = ops.expand_dims(ops.cast(padding_mask, sequence_output.dtype), -1)
        return ops.sum(sequence_output * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def _logit(self, sequence_output, pooled_output, padding_mask, training):
        pooled = self._pool(sequence_output, pooled_output, padding_mask)
        pooled = self.head_dropout(pooled, training=training)
        return ops.squeeze(self.click_head(pooled), axis=-1)

    def click_probability(self, inputs):
        """Sigmoid of the click logit, the served score."""
        return ops.sigmoid(self(inputs, training=False))

    def get_config(self):
        config = super().get_config()
        config.update({"backbone": keras.layers.serialize(self.backbone),
                       "dropout": self.dropout, "pooling": self.pooling})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)
