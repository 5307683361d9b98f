"""Tokenizes item texts (and queries) one by one into fixed-length BERT inputs, in the graph."""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf

from bert_recommender.models.layers.text_pair_packer import special_token_ids


@keras.saving.register_keras_serializable(package="bert_recommender")
class ItemTextTokenizer(keras.layers.Layer):
    """``[CLS] text [SEP] [PAD]...`` token ids of length ``sequence_length`` per string.

    The two-tower model encodes every text on its own (the candidate, each history item,
    the query) with one shared item encoder, so each string becomes one fixed-length row.
    Any input shape works: ``[batch]`` gives ``[batch, sequence_length]`` and
    ``[batch, history]`` gives ``[batch, history, sequence_length]``. Truncation keeps the
    first ``sequence_length - 2`` tokens; an empty string gives an all-``[PAD]`` row (no
    ``[CLS]``), which the model reads as "absent". The same layer tokenizes the catalogue
    once before training and raw strings inside the exported SavedModel.

    Example:
        >>> tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary="vocab.txt")
        >>> ItemTextTokenizer(tokenizer, sequence_length=16)(tf.constant(["acme laptop"]))
        <int32 [1, 16]>
    """

    def __init__(self, tokenizer, sequence_length: int, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        # Host-side preprocessing: takes and returns tf tensors under every Keras backend
        # (under JAX, Keras would otherwise convert the strings to jax arrays and fail),
        # as keras-hub's own preprocessing layers do.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        ids = special_token_ids(tokenizer)
        self.packer = keras_hub.layers.StartEndPacker(
            sequence_length=sequence_length, start_value=ids["[CLS]"],
            end_value=ids["[SEP]"], pad_value=0)

    def call(self, texts):
        # Always through one tf.function, eager or not: eager keras-hub tokenizers take a
        # pure-Python path, and in a graph (a serving signature, a tf.data map) a call op
        # to the function traced once per input rank replaces ~1,000 inlined ops per call.
        # A two-tower export tokenizes three inputs in each of its ~10 signatures: inlined,
        # building those ops was most of the export's time.
        return self._tokenize_in_graph(texts)

    @tf.function(reduce_retracing=True)
    def _tokenize_in_graph(self, texts):
        return self._tokenize(texts)

    def _tokenize(self, texts):
        texts = tf.convert_to_tensor(texts, tf.string)
        flat = tf.reshape(texts, [-1])
        tokens = self.tokenizer(flat)[:, : self.sequence_length - 2]
        ids = tf.cast(self.packer(tokens), tf.int32)
        # An empty text is absent (a missing query, history padding): no [CLS]/[SEP].
        present = tf.expand_dims(tf.strings.length(tf.strings.strip(flat)) > 0, -1)
        ids = tf.where(present, ids, tf.zeros_like(ids))
        shape = tf.concat([tf.shape(texts), [self.sequence_length]], axis=0)
        return tf.reshape(ids, shape)

    def get_config(self):
        config = super().get_config()
        config.update({"tokenizer": keras.layers.serialize(self.tokenizer),
                       "sequence_length": self.sequence_length})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tokenizer"] = keras.layers.deserialize(config["tokenizer"])
        return cls(**config)
