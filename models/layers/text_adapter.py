"""Trainable adapters from frozen pretrained text vectors to a recommender's item space."""

from __future__ import annotations

import keras
from keras import ops

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
