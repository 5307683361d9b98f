"""Tokenizes and packs (user text, item text) pairs into BERT inputs, in the graph."""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf


def special_token_ids(tokenizer) -> dict:
    """``{"[PAD]", "[CLS]", "[SEP]"}`` -> id in ``tokenizer``'s vocabulary; [PAD] must be 0
    because the models derive their padding mask as ``token_ids != 0``."""
    ids = {token: tokenizer.token_to_id(token) for token in ("[PAD]", "[CLS]", "[SEP]")}
    if ids["[PAD]"] != 0:
        raise ValueError(f"the vocabulary must put [PAD] at id 0, found {ids['[PAD]']}")
    return ids


@keras.saving.register_keras_serializable(package="bert_recommender")
class TextPairPacker(keras.layers.Layer):
    """``[CLS] user [SEP] item [SEP]`` token ids and segment ids from raw strings.

    Truncation is deterministic and never drops the candidate: the item side keeps up to
    ``item_max_tokens`` tokens (cut at the end) and the user side gets whatever room is left
    in ``sequence_length`` (cut at the end, so put the query and the most recent history
    first). The same layer runs inside tf.data and inside the exported SavedModel, so
    serving tokenizes exactly as training did.

    Example:
        >>> tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary="vocab.txt", lowercase=True)
        >>> packer = TextPairPacker(tokenizer, sequence_length=64, item_max_tokens=24)
        >>> packer(tf.constant(["i want a laptop ; acme laptop"]), tf.constant(["globex laptop"]))
        {'token_ids': <int32 [1, 64]>, 'segment_ids': <int32 [1, 64]>}
    """

    def __init__(self, tokenizer, sequence_length: int, item_max_tokens: int, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.sequence_length = sequence_length
        self.item_max_tokens = item_max_tokens
        # Host-side preprocessing: takes and returns tf tensors under every Keras backend
        # (under JAX, Keras would otherwise convert the strings to jax arrays and fail),
        # as keras-hub's own preprocessing layers do.
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        ids = special_token_ids(tokenizer)
        self.packer = keras_hub.layers.MultiSegmentPacker(
            sequence_length=sequence_length, start_value=ids["[CLS]"],
            end_value=ids["[SEP]"], pad_value=0, truncate="waterfall")

    def call(self, user_text, item_text):
        # Always through one tf.function, eager or not (as ItemTextTokenizer): eager
        # keras-hub tokenizers take a pure-Python path that returns lists, and in a graph
        # (a tf.data map, a serving signature) a call op to the function traced once
        # replaces the ~1,000 ops that each call would otherwise inline and build again.
        return self._pack_in_graph(user_text, item_text)

    #: The table's text columns :meth:`features` reads.
    text_columns = ("user_text", "item_text")

    def features(self, batch: dict) -> dict:
        """Model inputs from a batch of table columns (``user_text``, ``item_text``): the
        featurizer interface every model kind's featurizer shares."""
        return self(batch["user_text"], batch["item_text"])

    @tf.function(reduce_retracing=True)
    def _pack_in_graph(self, user_text, item_text):
        return self._pack(user_text, item_text)

    def _pack(self, user_text, item_text):
        user_text = tf.convert_to_tensor(user_text)
        item_text = tf.convert_to_tensor(item_text)
        if user_text.shape.rank != 1:  # a scalar string came in
            raise ValueError("TextPairPacker expects a batch (rank-1 tensor) of strings")
        # One tokenizer call for both sides: its per-call cost is what dominates a
        # serving batch.
        tokens = self.tokenizer(tf.concat([user_text, item_text], axis=0))
        batch = tf.shape(user_text)[0]
        user, item = tokens[:batch], tokens[batch:]
        item = item[:, : self.item_max_tokens]
        user_budget = self.sequence_length - 3 - item.row_lengths()
        positions = tf.ragged.range(user.row_lengths())
        user = tf.ragged.boolean_mask(user, positions < tf.expand_dims(user_budget, 1))
        token_ids, segment_ids = self.packer((user, item))
        return {"token_ids": tf.cast(token_ids, tf.int32),
                "segment_ids": tf.cast(segment_ids, tf.int32)}

    def get_config(self):
        config = super().get_config()
        config.update({
            "tokenizer": keras.layers.serialize(self.tokenizer),
            "sequence_length": self.sequence_length,
            "item_max_tokens": self.item_max_tokens,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["tokenizer"] = keras.layers.deserialize(config["tokenizer"])
        return cls(**config)
