"""A pre-LayerNorm BERT backbone for training from scratch.

keras-hub's ``BertBackbone`` is post-LN with N(0, 0.02) initialisation, like the original
BERT; that is what pretrained checkpoints need. Trained from random init on a CPU budget,
that stack does not learn to match a candidate's words against the user side at all (on a
pure "is this word in the other segment" task its validation AUC stays at 0.50 after 1,500
steps), while the same sizes with LayerNorm before each sub-layer (Xiong et al., 2020, "On
Layer Normalization in the Transformer Architecture") and Keras' default Glorot/uniform
initialisers learn it (AUC 0.63-1.00 after 1,500 steps depending on the seed). This class is
the keras-hub BERT graph with ``normalize_first=True`` encoder blocks; inputs, outputs and
sub-layer names match ``BertBackbone`` so BERTRecommender and the explainers treat both
alike. There is no final LayerNorm: with one, the same task learned far more slowly.

``activation`` is the feed-forward blocks' (exact GELU by default). ``"relu"`` makes a
training step of the MovieLens two-tower, whose item encoder runs over ~50k word pieces a
step, about a fifth cheaper on a CPU: GELU's element-wise ops (and their gradients) are
unfused there and cost more than the feed-forward matmuls themselves (docs/benchmarks.md,
"A faster two-tower").
"""

from __future__ import annotations

import keras
import keras_hub
from keras_hub.layers import PositionEmbedding, ReversibleEmbedding, TransformerEncoder


@keras.saving.register_keras_serializable(package="bert_recommender")
class PreLNBertBackbone(keras_hub.models.Backbone):
    """BERT with pre-LN transformer blocks; outputs ``sequence_output`` and ``pooled_output``.

    To run it from embeddings (e.g. for integrated gradients), call in order:
    token_embedding -> embeddings_add with position and segment embeddings ->
    embeddings_layer_norm -> embeddings_dropout -> each transformer layer with the padding
    mask -> pooled_dense on position 0 (for ``pooled_output``).
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 dropout=0.1, max_sequence_length=512, num_segments=2, activation="gelu",
                 dtype=None, **kwargs):
        self.token_embedding = ReversibleEmbedding(
            vocabulary_size, hidden_dim, dtype=dtype, name="token_embedding")
        self.position_embedding = PositionEmbedding(
            sequence_length=max_sequence_length, dtype=dtype, name="position_embedding")
        self.segment_embedding = keras.layers.Embedding(
            num_segments, hidden_dim, dtype=dtype, name="segment_embedding")
        self.embeddings_add = keras.layers.Add(dtype=dtype, name="embeddings_add")
        self.embeddings_layer_norm = keras.layers.LayerNormalization(
            dtype=dtype, name="embeddings_layer_norm")
        self.embeddings_dropout = keras.layers.Dropout(dropout, dtype=dtype,
                                                       name="embeddings_dropout")
        self.transformer_layers = [
            TransformerEncoder(
                num_heads=num_heads, intermediate_dim=intermediate_dim, activation=activation,
                dropout=dropout, normalize_first=True, dtype=dtype,
                name=f"transformer_layer_{i}")
            for i in range(num_layers)]
        self.pooled_dense = keras.layers.Dense(hidden_dim, activation="tanh", dtype=dtype,
                                               name="pooled_dense")

        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        segment_ids = keras.Input(shape=(None,), dtype="int32", name="segment_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        tokens = self.token_embedding(token_ids)
        x = self.embeddings_add(
            (tokens, self.position_embedding(tokens), self.segment_embedding(segment_ids)))
        x = self.embeddings_dropout(self.embeddings_layer_norm(x))
        for layer in self.transformer_layers:
            x = layer(x, padding_mask=padding_mask)
        super().__init__(
            inputs={"token_ids": token_ids, "segment_ids": segment_ids,
                    "padding_mask": padding_mask},
            outputs={"sequence_output": x, "pooled_output": self.pooled_dense(x[:, 0, :])},
            dtype=dtype, **kwargs)

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.activation = activation

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim, "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "num_segments": self.num_segments, "activation": self.activation})
        return config
