"""Trainable adapters from frozen pretrained text vectors to a recommender's item space."""

from __future__ import annotations

import keras
from keras import ops

from bert_recommender.models.bert_recommender import pool_tokens

ADAPTERS = ("linear", "whitening", "moe")


@keras.saving.register_keras_serializable(package="bert_recommender")
class TextAdapter(keras.layers.Layer):
    """Maps frozen text vectors ``[..., D]`` (a pretrained encoder's, computed once) to
    trainable item vectors ``[..., d]``.

    ``linear``
        ``x W + c``: a projection.
    ``whitening``
        ``(dropout(x) - b) W``: UniSRec's parametric whitening (Hou et al., KDD 2022), a
        learned centre ``b`` and projection. Frozen sentence vectors share a large common
        component (anisotropy); subtracting a learned mean lets the projection spread
        them out.
    ``moe``
        ``sum_e g_e(x) (dropout(x) - b_e) W_e``: UniSRec's mixture of ``experts``
        whitening layers with a softmax gate ``g(x) = softmax(x W_g)`` (UniSRec also adds
        gate noise while training; left out here, see :meth:`call`).

    Args:
      output_dim: d, the item vector size.
      kind: one of ``ADAPTERS``.
      experts: the mixture's size (``moe`` only).
      dropout: dropout on the frozen input vector (UniSRec's ``adaptor_dropout_prob``,
        0.2 there).
    """

    def __init__(self, output_dim: int, kind: str = "linear", experts: int = 8,
                 dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if kind not in ADAPTERS:
            raise ValueError(f"kind must be one of {ADAPTERS}, got {kind!r}")
        if experts <= 0:
            raise ValueError(f"experts must be > 0, got {experts}")
        self.output_dim = output_dim
        self.kind = kind
        self.experts = experts if kind == "moe" else 1
        self.dropout = dropout
        self.input_dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape):
        dim = input_shape[-1]
        if self.kind == "linear":
            self.kernel = self.add_weight(shape=(dim, self.output_dim), name="kernel",
                                          initializer="glorot_uniform")
            self.bias = self.add_weight(shape=(self.output_dim,), name="bias",
                                        initializer="zeros")
            return
        # One whitening layer per expert: a centre [E, D] and a projection [E, D, d].
        self.centre = self.add_weight(shape=(self.experts, dim), name="centre",
                                      initializer="zeros")
        self.kernel = self.add_weight(shape=(self.experts, dim, self.output_dim),
                                      name="kernel", initializer="glorot_uniform")
        if self.kind == "moe":
            # Zero gate weights: every expert starts with an equal share, as in UniSRec.
            self.gate = self.add_weight(shape=(dim, self.experts), name="gate",
                                        initializer="zeros")

    def call(self, vectors, training=False):
        x = self.input_dropout(ops.cast(vectors, self.compute_dtype), training=training)
        if self.kind == "linear":
            return ops.matmul(x, self.kernel) + self.bias
        # (x - b_e) W_e = x W_e - b_e W_e: one matmul for every expert, then the gate.
        # (An einsum "...i,eio->...eo" runs 20x slower on TensorFlow's CPU kernels.)
        dim, out = ops.shape(self.kernel)[1], self.output_dim
        stacked = ops.reshape(ops.transpose(self.kernel, (1, 0, 2)), (dim, self.experts * out))
        experts = ops.reshape(ops.matmul(x, stacked),
                              tuple(ops.shape(x)[:-1]) + (self.experts, out))
        experts = experts - ops.squeeze(ops.matmul(ops.expand_dims(self.centre, 1),
                                                   self.kernel), 1)
        if self.kind == "whitening":
            return experts[..., 0, :]
        # UniSRec's gate noise (softplus-scaled Gaussian on the gate logits) is a
        # load-balancing device for sparse top-k gates; with a dense softmax over 8 experts
        # it only adds variance, so the gate here is the clean one.
        gates = ops.softmax(ops.matmul(x, self.gate), axis=-1)
        return ops.sum(ops.expand_dims(gates, -1) * experts, axis=-2)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({"output_dim": self.output_dim, "kind": self.kind,
                       "experts": self.experts, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="bert_recommender")
class TokenStatesAdapter(keras.layers.Layer):
    """A :class:`TextAdapter` over the top transformer layers of a pretrained encoder,
    trained: the fine-tune-top-layers variant of the frozen text tower.

    Its input is each text's word-piece states below those layers, computed once by the
    frozen lower layers (``PretrainedTextEncoder`` with ``trainable_layers``):
    ``[..., max_tokens * D]``, padding positions zero. It runs the top layers over them
    (the zero positions masked), pools as the encoder would (``mean`` or ``first``) and
    adapts the pooled vector to the item space. With the layers' checkpoint weights
    (:meth:`initialize_from`) and before training, the pooled vector is the checkpoint's
    own. A step runs the top layers over every text it reads, so this costs what a
    ``max_tokens``-token, ``len(layer_configs)``-layer encoder costs per text: an
    accelerator's work for a large catalogue.

    Args:
      layer_configs: the ``keras_hub.layers.TransformerEncoder`` configs of the top
        layers, bottom first.
      max_tokens / state_dim: the states' layout, ``[max_tokens, state_dim]`` per text.
      pooling: ``mean`` over the present word pieces or ``first`` (the [CLS] state).
      output_dim / kind / experts / dropout: the :class:`TextAdapter` after pooling.
    """

    expensive = True  # the model adapts only the rows a step reads (see TwoTowerRecommender)

    def __init__(self, layer_configs: list, max_tokens: int, state_dim: int,
                 pooling: str, output_dim: int, kind: str = "linear", experts: int = 8,
                 dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        from keras_hub.layers import TransformerEncoder  # pylint: disable=import-outside-toplevel

        if pooling not in ("mean", "first"):
            raise ValueError(f"pooling must be mean or first, got {pooling!r}")
        self.layer_configs = [dict(c) for c in layer_configs]
        self.max_tokens, self.state_dim, self.pooling = max_tokens, state_dim, pooling
        self.top_layers = [TransformerEncoder.from_config({**c, "name": f"top_layer_{i}"})
                           for i, c in enumerate(self.layer_configs)]
        self.adapter = TextAdapter(output_dim, kind, experts, dropout, name="adapter")
        self.output_dim = output_dim

    def build(self, input_shape):
        for layer in self.top_layers:
            layer.build((None, self.max_tokens, self.state_dim))
        self.adapter.build(tuple(input_shape[:-1]) + (self.state_dim,))

    def initialize_from(self, layers) -> None:
        """Copies the checkpoint's top layers' weights (``layers``, bottom first)."""
        if len(layers) != len(self.top_layers):
            raise ValueError(f"{len(layers)} layers for {len(self.top_layers)} top layers")
        for mine, theirs in zip(self.top_layers, layers):
            mine.set_weights(theirs.get_weights())

    def pooled(self, features, training=False):
        """The top layers' pooled vectors ``[..., state_dim]`` of ``features``."""
        x = ops.cast(features, self.compute_dtype)
        lead = tuple(ops.shape(x)[:-1])
        states = ops.reshape(x, (-1, self.max_tokens, self.state_dim))
        present = ops.any(ops.not_equal(states, 0), axis=-1)
        mask = ops.cast(present, "int32")
        for layer in self.top_layers:
            states = layer(states, padding_mask=mask, training=training)
        pooled = pool_tokens(states, mask, self.pooling)
        # An absent text (all zero) is a zero vector, as the frozen encoder gives it.
        pooled = pooled * ops.cast(ops.any(present, axis=-1, keepdims=True), pooled.dtype)
        return ops.reshape(pooled, lead + (self.state_dim,))

    def call(self, features, training=False):
        return self.adapter(self.pooled(features, training), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({"layer_configs": [dict(c) for c in self.layer_configs], "max_tokens": self.max_tokens,
                       "state_dim": self.state_dim, "pooling": self.pooling,
                       "output_dim": self.output_dim, "kind": self.adapter.kind,
                       "experts": self.adapter.experts, "dropout": self.adapter.dropout})
        return config
