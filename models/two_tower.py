"""TwoTowerRecommender: one shared item encoder for the candidate, the history and the query.

::

    item tower   v(i)  = pool(BERT(text of i)) [+ id_embedding(i)]         (cacheable)
    user tower   x_k   = [Transformer]([v(query), v(h_1), ..., v(h_H)] [+ positions])
                 u     = mean of the x_k present (or the first present, user_pooling)
    logit        = (u . v(c) [+ max_k x_k . v(c)]) / sqrt(d) + item_bias(c) + global_bias
                   (similarity="cosine": cosines of the vectors, divided by a temperature)

The max term (``max_interest``, on by default) treats each part of the user side as an
interest and matches the candidate against the closest one, as multi-interest retrieval
does (MIND, ComiRec): "shares a word with *some* history item" is a max, which a mean
blurs. On the planted rule of tests/models (clicked iff the candidate shares a word with
one of 3 history items) a mean alone reached group AUC 0.85, mean + max 0.97. Both terms
are candidate-independent on the user side, so catalogue retrieval still needs only the
user state and cached item vectors (:meth:`TwoTowerRecommender.score_matrix`).

A cross-encoder must *discover* through attention that the same word on both sides of
``[SEP]`` matters; from random init and noisy clicks that takes longer than a CPU budget
allows (measured: 34% of the demo's oracle lift, group AUC 0.50). Here the history items
and the candidate go through the same encoder, so shared words give similar vectors by
construction (the PLM-NR / NRMS / UniSRec family). Item vectors depend on the item alone,
so a catalogue's vectors can be computed once and served by nearest-neighbour retrieval.

With ``num_items > 0`` each item vector also gets a learned id embedding and each logit an
item bias (a hybrid of text and collaborative signal). Index 0 means "no id": items unseen
in training, padding and the query get neither, so a cold-start item is scored from its
text alone. With ``item_encoder=None`` the model is id-only: a SASRec-style sequential
recommender without text, the baseline that shows what text adds.

With ``text_vectors_shape`` the item tower reads *frozen pretrained text vectors* instead
of running an encoder: a table ``[T, D]`` of one vector per catalogue text, computed once by
a pretrained checkpoint (models/pretrained_text.py) and held as a non-trainable weight,
and a trainable :class:`~bert_recommender.models.layers.text_adapter.TextAdapter` to the
item space (UniSRec's recipe). A step then costs what an id-only step costs plus the
adapter, and the full softmax over the catalogue (``loss="full_softmax"``) is open to a
text model. Texts outside the table (serving) arrive as ``extra_text_vectors`` computed by
the same frozen encoder.

With ``text_top_layers`` the table holds each text's word-piece states below the
checkpoint's top layers instead (``[T, max_tokens * D]``), and a
:class:`~bert_recommender.models.layers.text_adapter.TokenStatesAdapter` trains copies of
those top layers before pooling and adapting: fine-tuning the top of the encoder with its
lower layers computed once. A step then runs the top layers over every distinct text it
reads (every catalogue text with ``loss="full_softmax"``).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops
from keras_hub.layers import TransformerEncoder

from bert_recommender.models.bert_recommender import (POOLING, backbone_from_token_embeddings,
                                                      pool_tokens)
from bert_recommender.models.layers.text_adapter import TextAdapter, TokenStatesAdapter

LOSSES = ("bce", "softmax", "full_softmax")
SOFTMAX_LOSSES = ("softmax", "full_softmax")  # train on the positives alone
USER_POOLING = ("mean", "first")
SIMILARITIES = ("dot", "cosine")
# Softmax logit of a masked in-batch candidate: exp() underflows to 0 without inf arithmetic.
_MASKED_LOGIT = -1e9
# Frozen text tables up to this many rows are adapted whole once per call and gathered
# from (a training batch of 256 x 51 slots already reads more rows than that); larger
# ones adapt only the rows a batch reads.
_ADAPT_WHOLE_TABLE_ROWS = 16384


@keras.saving.register_keras_serializable(package="bert_recommender")
class TwoTowerRecommender(keras.Model):
    """History-aware two-tower click model with the ``BERTRecommender`` head contract.

    ``call`` returns the click *logit* (``[batch]``); :meth:`click_probability` is its
    sigmoid. Inputs (int32 only, see docs/design.md)::

        item_token_ids     [batch, L]      the candidate's text (ItemTextTokenizer)
        item_index         [batch]         its id-embedding index (0 = none)
        history_token_ids  [batch, H, L]   history item texts, most recent first
        history_index      [batch, H]      their id-embedding indices (0 = none / padding)
        query_token_ids    [batch, L]      the query (all [PAD] when there is none)

    With frozen text vectors (``text_vectors_shape``) the token inputs are replaced by::

        item_text_index     [batch]         the candidate's row of the text table (0 = none)
        history_text_index  [batch, H]      the history items' rows (0 = padding)
        extra_text_vectors  [m, D] float    optional: vectors of texts outside the table,
                                            named by rows T..T+m-1 (serving)

    Args:
      item_encoder: a keras-hub ``BertBackbone`` / ``PreLNBertBackbone`` over item texts,
        or None for an id-only model (or one over frozen text vectors).
      text_vectors_shape: ``(T, D)``: read item texts as rows of a frozen table of
        pretrained vectors (set with :meth:`set_text_vectors`; row 0 = no text) through a
        trainable adapter, instead of an encoder. Needs ``embedding_dim``.
      adapter / adapter_experts / adapter_dropout: the ``TextAdapter`` of the frozen
        vectors (``linear``, ``whitening`` or ``moe``).
      text_top_layers / text_tokens: the fine-tune-top-layers variant: the
        ``TransformerEncoder`` configs of the checkpoint's top layers (trained here,
        pooled as ``pooling`` says) over a table of word-piece states, ``text_tokens``
        per text (``text_vectors_shape[1] = text_tokens * D``).
      similarity / temperature: ``dot`` (the logit's dot products scaled by
        ``1 / sqrt(d)``) or ``cosine`` (of unit-length vectors, divided by
        ``temperature``).
      num_items: size of the id vocabulary (ids 1..num_items); 0 turns ids off.
      max_history: H, the history items the user tower reads.
      embedding_dim: the item/user vector size; defaults to the encoder's hidden size.
      pooling: how item token vectors become one vector (``mean``, ``first``, ``cls``).
      user_layers / user_heads / user_intermediate_dim: the user-sequence transformer
        (``user_layers=0``: none, the parts are pooled as the item tower gives them).
      user_pooling: ``u`` is the ``mean`` of the sequence outputs present, or the
        ``first`` present one (the query, else the most recent history item).
      max_interest: add the max over the user's parts to the pooled dot product.
      catalogue_size: items the ``item_index`` inputs can name (1..catalogue_size), for the
        softmax loss's logQ correction; defaults to ``num_items``. A text-only model has
        no id embeddings but still samples its in-batch negatives by item frequency.
      dropout: dropout in the user transformer and on the item id embeddings.
      deduplicate_items: encode each distinct item text of a batch once, and at inference
        compute each distinct history's user state once (TensorFlow
        backend; turn off for XLA-compiled steps, which need static shapes).
      loss: ``bce`` (pointwise, compiled by the training library) or ``softmax``: a
        sampled softmax over the batch's candidates (in-batch negatives) with accidental
        hits removed and logQ correction by :meth:`set_item_counts`; or ``full_softmax``:
        cross-entropy over every catalogue item (RecBole's ``CE`` for sequential models;
        id-only models and frozen text vectors, whose every item vector is cheap). With
        either softmax the training rows must be positives only.
    """

    def __init__(self, item_encoder=None, num_items: int = 0, max_history: int = 5,
                 embedding_dim: int = 0, pooling: str = "mean", user_layers: int = 1,
                 user_heads: int = 2, user_intermediate_dim: int = 0, dropout: float = 0.1,
                 loss: str = "bce", max_interest: bool = True, catalogue_size: int = 0,
                 deduplicate_items: bool = True, user_pooling: str = "mean",
                 text_vectors_shape=None, adapter: str = "linear", adapter_experts: int = 8,
                 adapter_dropout: float = 0.2, similarity: str = "dot",
                 temperature: float = 0.07, text_top_layers=None, text_tokens: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        if user_pooling not in USER_POOLING:
            raise ValueError(f"user_pooling must be one of {USER_POOLING}, got "
                             f"{user_pooling!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        frozen = text_vectors_shape is not None
        if frozen and item_encoder is not None:
            raise ValueError("give an item_encoder or text_vectors_shape, not both")
        if text_top_layers and (not frozen or text_tokens <= 0
                                or text_vectors_shape[1] % text_tokens):
            raise ValueError("text_top_layers read a table of word-piece states: give "
                             "text_vectors_shape (T, text_tokens * D) and text_tokens > 0")
        if loss == "full_softmax" and (item_encoder is not None
                                       or max(num_items, catalogue_size) <= 0):
            raise ValueError("loss='full_softmax' scores every catalogue item at each step: "
                             "it needs item vectors that cost a lookup (an id-only model, "
                             "or frozen text vectors) and a catalogue (num_items or "
                             "catalogue_size > 0)")
        if item_encoder is None and not frozen and num_items <= 0:
            raise ValueError("an id-only TwoTowerRecommender (item_encoder=None) needs "
                             "num_items > 0")
        self.item_encoder = item_encoder
        self.num_items = num_items
        self.max_history = max_history
        self.pooling = pooling
        self.user_layers = user_layers
        self.user_heads = user_heads
        self.dropout = dropout
        self.loss_kind = loss
        self.max_interest = bool(max_interest)
        self.deduplicate_items = bool(deduplicate_items)
        self.user_pooling = user_pooling
        self.similarity, self.temperature = similarity, float(temperature)
        self.catalogue_size = max(catalogue_size, num_items)
        hidden = item_encoder.hidden_dim if item_encoder is not None else embedding_dim
        self.embedding_dim = embedding_dim or hidden
        if not self.embedding_dim:
            raise ValueError("a TwoTowerRecommender without an item_encoder needs "
                             "embedding_dim > 0")
        self.user_intermediate_dim = user_intermediate_dim or 2 * self.embedding_dim
        d = self.embedding_dim
        self.text_vectors_shape = tuple(int(n) for n in text_vectors_shape) if frozen else None
        self.adapter, self.adapter_experts = adapter, adapter_experts
        self.adapter_dropout = adapter_dropout
        self.text_adapter = None
        if frozen:
            self.text_table = self.add_weight(shape=self.text_vectors_shape,
                                              initializer="zeros", trainable=False,
                                              name="text_table")
            self.text_adapter = (
                TokenStatesAdapter(text_top_layers, text_tokens,
                                   self.text_vectors_shape[1] // text_tokens, pooling, d,
                                   adapter, adapter_experts, adapter_dropout,
                                   name="text_adapter") if text_top_layers else
                TextAdapter(d, adapter, adapter_experts, adapter_dropout, name="text_adapter"))
        self.text_top_layers = [dict(c) for c in text_top_layers or []]
        self.text_tokens = int(text_tokens) if self.text_top_layers else 0
        self.item_projection = None
        if item_encoder is not None:
            if pooling != "cls":
                # The [CLS] pooler is unused; keep it out of the optimizer.
                item_encoder.pooled_dense.trainable = False
            self.item_projection = (keras.layers.Dense(d, name="item_projection")
                                    if d != hidden else None)
        if num_items > 0:
            self.item_id_embedding = keras.layers.Embedding(
                num_items + 1, d, embeddings_initializer=keras.initializers.RandomNormal(
                    stddev=0.02), name="item_id_embedding")
            self.item_bias = keras.layers.Embedding(num_items + 1, 1,
                                                    embeddings_initializer="zeros",
                                                    name="item_bias")
            self.id_dropout = keras.layers.Dropout(dropout, name="id_dropout")
        if self.catalogue_size > 0:
            # log q(item): how often the in-batch sampler draws each item (set_item_counts).
            self.log_sampling_probability = self.add_weight(
                shape=(self.catalogue_size + 1,), initializer="zeros", trainable=False,
                name="log_sampling_probability")
        if loss == "full_softmax" and self.catalogue_size > 0:
            # 1 for the items training saw (set_trained_items): the others are left out of
            # the full softmax (see _full_softmax).
            self.trained_items = self.add_weight(
                shape=(self.catalogue_size + 1,), initializer="ones", trainable=False,
                name="trained_items")
        # user_layers=0: the parts are matched as they come out of the item tower; > 0 adds a
        # SASRec-style transformer with position embeddings over them. On the planted-rule
        # test (tests/models) a 1-layer transformer lowered group AUC from 0.97 to 0.88: on
        # small data it mixes the items before they are matched.
        self.position_embedding = None
        if user_layers > 0:
            self.position_embedding = keras.layers.Embedding(
                max_history + 1, d, embeddings_initializer=keras.initializers.RandomNormal(
                    stddev=0.02), name="user_position_embedding")
        self.user_transformer = [
            TransformerEncoder(num_heads=user_heads, intermediate_dim=self.user_intermediate_dim,
                               dropout=dropout, activation="gelu", normalize_first=True,
                               name=f"user_transformer_{i}")
            for i in range(user_layers)]
        self.global_bias = self.add_weight(shape=(), initializer="zeros", name="global_bias",
                                           dtype="float32")

    # -- towers ------------------------------------------------------------------------

    @property
    def reads_text(self) -> bool:
        """Whether item vectors have a text part (an encoder or frozen text vectors)."""
        return self.item_encoder is not None or self.text_adapter is not None

    @property
    def text_input_names(self) -> tuple:
        """The input names of the candidate's and the history items' texts: token rows
        for an encoder, text-table rows for frozen text vectors (``()``: no text)."""
        if self.text_adapter is not None:
            return ("item_text_index", "history_text_index")
        return ("item_token_ids", "history_token_ids") if self.item_encoder is not None else ()

    def set_text_vectors(self, vectors) -> None:
        """Fills the frozen text table ``[T, D]`` (row 0, "no text", is zeroed)."""
        vectors = np.asarray(vectors, np.float32)
        if self.text_vectors_shape is None or vectors.shape != self.text_vectors_shape:
            raise ValueError(f"text vectors of shape {vectors.shape}; the model was built for "
                             f"{self.text_vectors_shape}")
        vectors = vectors.copy()
        vectors[0] = 0.0
        self.text_table.assign(vectors)

    def item_vectors(self, texts, item_index, training=False, extra_text_vectors=None):
        """``v(i)`` for items given as texts and id indices ``[n]``: token rows ``[n, L]``
        for an encoder, text-table rows ``[n]`` for frozen text vectors (``extra_text_vectors``
        holds those of rows past the table), None without text. Any leading shape works:
        ``[b, h, L]`` and ``[b, h]`` give ``[b, h, d]``."""
        return self._with_ids(self._text_vectors(texts, training, extra_text_vectors),
                              item_index, training)

    def candidate_vectors(self, inputs, training=False):
        """``v(i)`` of the candidates of a batch of model inputs ``[b, d]``."""
        text = inputs.get(self.text_input_names[0]) if self.reads_text else None
        return self.item_vectors(text, inputs["item_index"], training,
                                 inputs.get("extra_text_vectors"))

    def _text_vectors(self, texts, training, extra_text_vectors=None, adapted=None):
        """The text part of item vectors (None for an id-only model)."""
        if self.item_encoder is not None:
            return self._encode_text(texts, training)
        if self.text_adapter is None:
            return None
        rows = ops.cast(texts, "int32")
        if adapted is not None:  # call(): the whole table, adapted once per step
            vectors = ops.take(adapted, rows, axis=0)
        elif self.text_top_layers:
            # Top layers over word-piece states: each distinct row once (a batch repeats
            # popular items across its histories).
            table = self._text_table(extra_text_vectors)
            vectors = ops.reshape(
                self._once_per_distinct_row(ops.reshape(rows, (-1,)), lambda unique: (
                    self.text_adapter(ops.take(table, unique, axis=0), training=training))),
                tuple(ops.shape(rows)) + (self.embedding_dim,))
        else:  # catalogue scoring, serving: only the rows asked for
            vectors = self.text_adapter(ops.take(self._text_table(extra_text_vectors), rows,
                                                 axis=0), training=training)
        present = ops.expand_dims(ops.cast(ops.greater(rows, 0), vectors.dtype), -1)
        return vectors * present

    def _text_table(self, extra_text_vectors=None):
        table = ops.convert_to_tensor(self.text_table)
        if extra_text_vectors is None:
            return table
        return ops.concatenate([table, ops.cast(extra_text_vectors, table.dtype)], axis=0)

    def _adapted_table(self, training, extra_text_vectors=None):
        """The adapter's output for every row of the text table (and the extra rows), or
        None when the table is too large to adapt whole (see ``_ADAPT_WHOLE_TABLE_ROWS``):
        what a training step shares between its history, candidates and full softmax.
        Trained top layers (``text_top_layers``) adapt the whole table only for a
        training step's full softmax, which reads every row anyway."""
        if self.text_vectors_shape[0] > _ADAPT_WHOLE_TABLE_ROWS or (
                self.text_top_layers and not (training and self.loss_kind == "full_softmax")):
            return None
        return self.text_adapter(self._text_table(extra_text_vectors), training=training)

    def _text_present(self, texts):
        """``[...]`` bool: which texts are present (token rows with a non-[PAD] id, or
        text-table rows > 0)."""
        if self.text_adapter is not None:
            return ops.greater(ops.cast(texts, "int32"), 0)
        return ops.any(ops.not_equal(texts, 0), -1)

    def _with_ids(self, text_vectors, item_index, training):
        """Adds the id embedding of each known id (index > 0) to its text vector (None:
        an id-only model); unchanged without ids."""
        if self.num_items <= 0:
            return text_vectors
        index = ops.cast(item_index, "int32")
        ids = self.id_dropout(self.item_id_embedding(index), training=training)
        ids = ids * ops.expand_dims(ops.cast(ops.greater(index, 0), ids.dtype), -1)
        return ids if text_vectors is None else text_vectors + ops.cast(ids,
                                                                        text_vectors.dtype)

    def _encode_unique_text(self, token_rows, training):
        """``_encode_text`` of ``[n, L]`` rows, running the encoder once per distinct row.

        A batch repeats items: popular ones sit in many histories, and an evaluation
        impression repeats one user's history for each of its candidates. On ml-latest-small
        with 50 history items, a training batch of 256 holds ~13k item slots but a few
        thousand distinct items. Distinct rows are found with TensorFlow's ``UniqueV2``
        (per replica, inside the step); other backends and XLA-compiled steps (no dynamic
        shapes) encode every row.
        """
        return self._once_per_distinct_row(ops.cast(token_rows, "int32"),
                                           lambda unique: self._encode_text(unique, training))

    def _once_per_distinct_row(self, rows, fn):
        """``fn(rows)`` for int rows ``[n, ...]``, running ``fn`` once per distinct row and
        gathering the results back (TensorFlow's ``UniqueV2``, with ``deduplicate_items``);
        other backends and XLA-compiled steps (no dynamic shapes) run every row."""
        if not self.deduplicate_items or keras.backend.backend() != "tensorflow":
            return fn(rows)
        import tensorflow as tf  # pylint: disable=import-outside-toplevel  # TF backend only

        unique, slot = tf.raw_ops.UniqueV2(x=rows, axis=tf.constant([0], tf.int64))
        return ops.take(fn(unique), slot, axis=0)

    def _encode_text(self, token_ids, training):
        token_ids = ops.cast(token_ids, "int32")
        shape = ops.shape(token_ids)
        flat = ops.reshape(token_ids, (-1, shape[-1]))
        mask = ops.cast(ops.not_equal(flat, 0), "int32")
        outputs = self.item_encoder({"token_ids": flat, "segment_ids": ops.zeros_like(flat),
                                     "padding_mask": mask}, training=training)
        pooled = self._pool_text(outputs["sequence_output"], outputs["pooled_output"], flat)
        return ops.reshape(pooled, tuple(shape[:-1]) + (self.embedding_dim,))

    def _pool_text(self, sequence_output, pooled_output, token_ids):
        """One vector per text row ``[n, d]`` from the encoder's outputs."""
        mask = ops.cast(ops.not_equal(token_ids, 0), "int32")
        pooled = (pooled_output if self.pooling == "cls"
                  else pool_tokens(sequence_output, mask, self.pooling))
        if self.item_projection is not None:
            pooled = self.item_projection(pooled)
        # An absent text (all [PAD]) is a zero vector, whatever the encoder's biases.
        present = ops.cast(ops.any(ops.not_equal(token_ids, 0), axis=-1, keepdims=True),
                           pooled.dtype)
        return pooled * present

    # -- from word-piece embeddings (explanations) ---------------------------------------

    def token_embeddings(self, token_ids):
        """The item encoder's word-piece embeddings of ``token_ids``: what attribution
        methods interpolate and differentiate (positions are added after them)."""
        return self.item_encoder.token_embedding(token_ids)

    def logit_from_slot_embeddings(self, slot_embeddings, slot_token_ids, history_index,
                                   item_index, training=False):
        """The click logit from the word-piece embeddings of every text the model reads.

        ``slot_embeddings`` ``[b, 2 + H, L, h]`` and ``slot_token_ids`` ``[b, 2 + H, L]``
        hold, per example, the query (slot 0), the H history items (most recent first) and
        the candidate (last slot), each laid out as ``ItemTextTokenizer`` lays it out (the
        ids give the padding masks; the embeddings are what the encoder reads). Equals
        ``call`` on the same texts up to float round-off (tests/models check it).
        """
        slot_token_ids = ops.cast(slot_token_ids, "int32")
        batch, slots, length = ops.shape(slot_token_ids)
        flat_ids = ops.reshape(slot_token_ids, (-1, length))
        flat = ops.reshape(slot_embeddings, (-1, length, ops.shape(slot_embeddings)[-1]))
        mask = ops.cast(ops.not_equal(flat_ids, 0), "int32")
        sequence, _ = backbone_from_token_embeddings(
            self.item_encoder, flat, ops.zeros_like(flat_ids), mask, training)
        pooled_output = (self.item_encoder.pooled_dense(sequence[:, 0, :])
                         if self.pooling == "cls" else None)
        text = ops.reshape(self._pool_text(sequence, pooled_output, flat_ids),
                           (batch, slots, self.embedding_dim))
        history_index = ops.cast(history_index, "int32")
        item_index = ops.cast(item_index, "int32")
        ids = ops.concatenate([history_index, ops.expand_dims(item_index, 1)], axis=1)
        vectors = self._with_ids(text[:, 1:], ids, training)
        inputs = {"history_index": history_index,
                  "history_token_ids": slot_token_ids[:, 1:-1],
                  "query_token_ids": slot_token_ids[:, 0]}
        state = self.user_state(inputs, training, history_vectors=vectors[:, :-1],
                                query_vector=text[:, 0])
        return self.score(state, vectors[:, -1], item_index)

    def logit_from_text_vectors(self, text_vectors, history_index, item_index,
                                training=False):
        """The click logit of a frozen-text model from given text vectors instead of its
        table's rows: ``text_vectors`` ``[b, H + 1, D]`` holds, per example, the H history
        items' vectors (most recent first) and the candidate's (last); a zero vector is an
        absent text, as table row 0 is. Explanations compute the vectors with the frozen
        checkpoint from word-piece embeddings and differentiate through it. Equals
        ``call`` on the table's own vectors up to float round-off (tests/models check it).
        """
        text_vectors = ops.convert_to_tensor(text_vectors)
        present = ops.any(ops.not_equal(text_vectors, 0), axis=-1)
        adapted = self.text_adapter(text_vectors, training=training)
        adapted = adapted * ops.expand_dims(ops.cast(present, adapted.dtype), -1)
        history_index = ops.cast(history_index, "int32")
        item_index = ops.cast(item_index, "int32")
        ids = ops.concatenate([history_index, ops.expand_dims(item_index, 1)], axis=1)
        vectors = self._with_ids(adapted, ids, training)
        # The history's presence, as text-table rows would say it (row > 0: a text).
        inputs = {"history_index": history_index,
                  "history_text_index": ops.cast(present[:, :-1], "int32")}
        state = self.user_state(inputs, training, history_vectors=vectors[:, :-1])
        return self.score(state, vectors[:, -1], item_index)

    def user_state(self, inputs, training=False, history_vectors=None,
                   query_vector=None) -> dict:
        """The user side of the score, for a batch of users::

            user            [b, d]      mean of the sequence outputs present
            interests       [b, 1+H, d] the sequence outputs (query, then history items)
            interest_mask   [b, 1+H]    1 where that part is present

        The query and each history item go through the item tower, then (``user_layers``
        > 0) the user transformer with position embeddings. Nothing here depends on the
        candidate, so the state is computed once per user and scored against cached item
        vectors (:meth:`score_matrix`).
        """
        history_index = ops.cast(inputs["history_index"], "int32")
        history_texts = inputs.get(self.text_input_names[1]) if self.reads_text else None
        query_tokens = inputs.get("query_token_ids")
        if history_vectors is None:
            history_vectors = self.item_vectors(history_texts, history_index, training,
                                                inputs.get("extra_text_vectors"))
        present = ops.greater(history_index, 0)
        if history_texts is not None:
            present = ops.logical_or(present, self._text_present(history_texts))
        if self.item_encoder is not None and query_tokens is not None:
            query = (self._encode_text(query_tokens, training) if query_vector is None
                     else query_vector)
            query_present = ops.any(ops.not_equal(query_tokens, 0), axis=-1)
        else:  # no text encoder (ids, frozen text vectors): no query
            query = ops.zeros_like(history_vectors[:, 0, :])
            query_present = ops.zeros_like(present[:, 0])
        sequence = ops.concatenate([ops.expand_dims(query, 1),
                                    ops.cast(history_vectors, query.dtype)], axis=1)
        mask = ops.cast(ops.concatenate([ops.expand_dims(query_present, 1), present], axis=1),
                        "int32")
        x = sequence
        if self.user_transformer:
            positions = ops.arange(ops.shape(sequence)[1])
            x = x + ops.cast(self.position_embedding(positions), x.dtype)
            for layer in self.user_transformer:
                x = layer(x, padding_mask=mask, training=training)
        weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
        x = x * weights
        if self.user_pooling == "first":
            # One-hot of the first present part (none present: all zeros, so u = 0).
            first = ops.cumsum(mask, axis=1) * mask
            weights = ops.expand_dims(ops.cast(ops.equal(first, 1), x.dtype), -1)
        pooled = ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)
        return {"user": pooled, "interests": x, "interest_mask": mask}

    def user_vectors(self, inputs, training=False):
        """``u``, the pooled user vector ``[b, d]`` (see :meth:`user_state`)."""
        return self.user_state(inputs, training)["user"]

    # -- scoring -----------------------------------------------------------------------

    def call(self, inputs, training=False):
        item_index = ops.cast(inputs["item_index"], "int32")
        history_index = ops.cast(inputs["history_index"], "int32")
        adapted = None  # the frozen text table through the adapter, once per step
        if self.item_encoder is not None:
            # One encoder pass over the history and the candidate texts together.
            history_tokens = inputs["history_token_ids"]
            batch, history, length = ops.shape(history_tokens)
            tokens = ops.concatenate([ops.reshape(history_tokens, (-1, length)),
                                      inputs["item_token_ids"]], axis=0)
            index = ops.concatenate([ops.reshape(history_index, (-1,)), item_index], axis=0)
            vectors = self._with_ids(self._encode_unique_text(tokens, training), index,
                                     training)
            split = batch * history
            history_vectors = ops.reshape(vectors[:split], (batch, history,
                                                            self.embedding_dim))
            item = vectors[split:]
        else:
            # Ids alone (no text inputs: no text part), or frozen text vectors, whose
            # adapter runs once per step over the whole table (or the rows read), shared by
            # the history, the candidates and the full softmax.
            extra = inputs.get("extra_text_vectors")
            if self.text_adapter is not None:
                adapted = self._adapted_table(training, extra)
            history_vectors = self._with_ids(self._text_vectors(
                inputs.get("history_text_index"), training, extra, adapted), history_index,
                training)
            item = self._with_ids(self._text_vectors(
                inputs.get("item_text_index"), training, extra, adapted), item_index,
                training)
        if (not training and self.item_encoder is None and self.deduplicate_items
                and keras.backend.backend() == "tensorflow"):
            state = self._distinct_user_state(inputs, history_vectors)
        else:
            state = self.user_state(inputs, training, history_vectors=history_vectors)
        logit = self.score(state, item, item_index)
        if training and self.loss_kind == "softmax":
            self.add_loss(self._in_batch_softmax(state, item, item_index))
        elif training and self.loss_kind == "full_softmax":
            self.add_loss(self._full_softmax(state, item_index, training, adapted))
        return logit

    def _distinct_user_state(self, inputs, history_vectors) -> dict:
        """:meth:`user_state` at inference, computed once per distinct history of the
        batch and gathered back to its rows. An evaluation impression repeats its user's
        history for each of its candidates (20-100 rows per user), and the user
        transformer is most of a scoring step of a model without a text encoder (ids,
        frozen text vectors; an encoder's query would also have to match). Distinct rows
        are found with TensorFlow's ``UniqueV2``, as in :meth:`_encode_unique_text`."""
        import tensorflow as tf  # pylint: disable=import-outside-toplevel  # TF backend only

        names = ["history_index"] + ([self.text_input_names[1]] if self.reads_text else [])
        names = [n for n in names if inputs.get(n) is not None]
        keys = ops.concatenate([ops.cast(inputs[n], "int32") for n in names], axis=1)
        unique, slot = tf.raw_ops.UniqueV2(x=keys, axis=tf.constant([0], tf.int64))
        first = tf.math.unsorted_segment_min(tf.range(tf.shape(keys)[0]), slot,
                                             tf.shape(unique)[0])
        state = self.user_state({n: tf.gather(inputs[n], first) for n in names}, False,
                                history_vectors=tf.gather(history_vectors, first))
        return {k: tf.gather(v, slot) for k, v in state.items()}

    def score_matrix(self, user_state: dict, item_vectors, item_index):
        """Logits of every user in ``user_state`` ``[b]`` against every item ``[n, d]``:
        ``[b, n]``. The candidate-independent user state and cacheable item vectors make
        this retrieval over a whole catalogue."""
        user, interests, items, scale = self._matched(user_state, item_vectors)
        logits = ops.matmul(user, ops.transpose(items)) * scale
        if self.max_interest:
            per_interest = ops.einsum("bkd,nd->bkn", interests, items) * scale
            present = ops.expand_dims(ops.cast(user_state["interest_mask"], "bool"), -1)
            best = ops.max(ops.where(present, per_interest, _MASKED_LOGIT), axis=1)
            # A user with nothing present has no interest to match: 0, not -1e9.
            logits = logits + ops.where(ops.any(present, axis=1), best, 0.0)
        return (logits + ops.expand_dims(self.item_biases(item_index), 0)
                + ops.cast(self.global_bias, "float32"))

    def score(self, user_state: dict, item_vectors, item_index):
        """Logits of aligned users ``[b]`` and items ``[b, d]`` (``score_matrix``'s
        diagonal, computed without the ``[b, b]`` matrix)."""
        user, interests, items, scale = self._matched(user_state, item_vectors)
        logits = ops.sum(user * items, axis=-1) * scale
        if self.max_interest:
            per_interest = ops.sum(interests * ops.expand_dims(items, 1), axis=-1) * scale
            present = ops.cast(user_state["interest_mask"], "bool")
            best = ops.max(ops.where(present, per_interest, _MASKED_LOGIT), axis=1)
            logits = logits + ops.where(ops.any(present, axis=1), best, 0.0)
        # Cast: under a mixed policy Keras reads float32 variables in the compute dtype.
        return logits + self.item_biases(item_index) + ops.cast(self.global_bias, "float32")

    def _matched(self, user_state: dict, item_vectors) -> tuple:
        """``(user, interests, items, scale)`` as the logit compares them, in float32: as
        they are with scale ``1 / sqrt(d)`` (``dot``), or unit-length with scale
        ``1 / temperature`` (``cosine``, as UniSRec fine-tunes over frozen text vectors)."""
        return (*(self._compared(v) for v in (user_state["user"], user_state["interests"],
                                              item_vectors)), self._logit_scale())

    def _compared(self, vectors):
        """``vectors`` as the logit compares them: as they are (``dot``) or unit-length
        (``cosine``; an absent part, a zero vector, stays zero), in float32."""
        vectors = ops.cast(vectors, "float32")
        if self.similarity == "dot":
            return vectors
        return vectors * ops.rsqrt(ops.maximum(ops.sum(vectors * vectors, axis=-1,
                                                       keepdims=True), 1e-12))

    def _logit_scale(self) -> float:
        return (1.0 / math.sqrt(self.embedding_dim) if self.similarity == "dot"
                else 1.0 / self.temperature)

    def retrieval_vectors(self, item_vectors, item_index):
        """The catalogue as one inner-product index, ``[n, d + 1]``: each item vector as
        the logit compares it, times the logit's scale, then the item's bias.

        With :meth:`retrieval_queries`, ``score_matrix(state, items, index) == max over
        present k of queries[:, k] @ retrieval_vectors(items, index).T + global_bias``
        (up to float rounding): the pooled match plus the best single interest is the
        best of ``user + interest_k`` (the max moves out of the sum). So one matrix
        product, or a maximum-inner-product index (trainer/serving/retrieval.py), ranks a
        catalogue exactly as the model scores it."""
        items = self._compared(item_vectors) * self._logit_scale()
        return ops.concatenate(
            [items, ops.expand_dims(self.item_biases(item_index), -1)], axis=-1)

    def retrieval_queries(self, user_state: dict) -> tuple:
        """``(queries [b, K, d + 1], present [b, K] bool)``: the inner-product queries of
        each user against :meth:`retrieval_vectors` (the logit is the best present one,
        plus ``global_bias``). Without ``max_interest``: one query, the user vector. With
        it: ``user + interest_k`` for each part of the user state, then the user vector
        alone, present only for a user with no part present (whose logit adds 0)."""
        user = self._compared(user_state["user"])
        ones = ops.ones_like(user[:, :1])
        if not self.max_interest:
            return (ops.expand_dims(ops.concatenate([user, ones], axis=-1), 1),
                    ops.ones_like(ones, dtype="bool"))
        interests = ops.expand_dims(user, 1) + self._compared(user_state["interests"])
        present = ops.cast(user_state["interest_mask"], "bool")
        queries = ops.concatenate([interests, ops.expand_dims(user, 1)], axis=1)
        ones = ops.ones_like(queries[..., :1])
        none_present = ops.logical_not(ops.any(present, axis=1, keepdims=True))
        return (ops.concatenate([queries, ones], axis=-1),
                ops.concatenate([present, none_present], axis=1))

    def item_biases(self, item_index):
        """The learned per-item bias (0 for id 0 and for id-less models), ``[n]``."""
        if self.num_items <= 0:
            return ops.zeros(ops.shape(item_index), "float32")
        index = ops.cast(item_index, "int32")
        known = ops.cast(ops.greater(index, 0), "float32")
        return ops.cast(ops.squeeze(self.item_bias(index), -1), "float32") * known

    def _in_batch_softmax(self, user_state, item, item_index):
        """Sampled softmax: each row's candidate against every candidate in the batch."""
        import keras_rs  # pylint: disable=import-outside-toplevel  # training-only path

        logits = self.score_matrix(user_state, item, item_index)
        labels = ops.eye(ops.shape(logits)[0], dtype="float32")
        if self.catalogue_size > 0:
            probability = ops.exp(ops.cast(ops.take(self.log_sampling_probability,
                                                    item_index), "float32"))
            logits = keras_rs.layers.SamplingProbabilityCorrection()(
                logits, ops.broadcast_to(ops.expand_dims(probability, 0), ops.shape(logits)))
        # Accidental hits (another row's positive is this row's item) are masked here, not
        # with keras_rs.layers.RemoveAccidentalHits: in keras-rs 0.4.0 it adds ~1e-40 to the
        # logits, a no-op (keras-team/keras-rs PR #206), so duplicates stayed as negatives.
        index = ops.cast(item_index, "int32")
        same = ops.logical_and(ops.equal(ops.expand_dims(index, 1), ops.expand_dims(index, 0)),
                               ops.expand_dims(ops.greater(index, 0), 0))  # 0: no id known
        duplicate = ops.logical_and(same, ops.logical_not(ops.cast(labels, "bool")))
        logits = ops.where(duplicate, ops.full_like(logits, _MASKED_LOGIT), logits)
        return ops.mean(keras.losses.categorical_crossentropy(labels, logits,
                                                             from_logits=True))

    def _full_softmax(self, user_state, item_index, training, adapted=None):
        """Cross-entropy of each row's item against every catalogue item training saw
        (1..N, ``set_trained_items``): their id embeddings and, with frozen text vectors,
        text-table rows 1..N (the kind lays the catalogue's texts out first).

        Items training never saw (held out for cold start, or only in evaluation) are not
        negatives here: a text model would otherwise learn to push their *texts* down
        from the mere fact that no training row ever chose them, which is a leak of the
        split, not a preference."""
        every = ops.arange(1, self.catalogue_size + 1, dtype="int32")
        trained = ops.cast(ops.take(self.trained_items, every), "bool")
        ids = every * ops.cast(trained, "int32")
        texts = (self._text_vectors(every, training, adapted=adapted)
                 if self.text_adapter is not None else None)
        logits = self.score_matrix(user_state, self._with_ids(texts, ids, training), ids)
        logits = ops.where(ops.expand_dims(trained, 0), logits, _MASKED_LOGIT)
        labels = ops.maximum(ops.cast(item_index, "int32") - 1, 0)
        return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                    from_logits=True))

    def set_trained_items(self, mask) -> None:
        """Marks the catalogue items (index 1..catalogue_size; ``[catalogue_size + 1]``
        bools) that training saw; only those keep their id embedding in the full softmax."""
        if hasattr(self, "trained_items"):
            self.trained_items.assign(np.asarray(mask, np.float32)[:self.catalogue_size + 1])

    def set_item_counts(self, item_index: np.ndarray) -> None:
        """Sets log q(item) from the training positives' id indices (in-batch negatives
        are drawn with each item's share of the positives)."""
        if self.catalogue_size <= 0:
            return
        size = self.catalogue_size + 1
        counts = np.bincount(np.asarray(item_index, np.int64), minlength=size)[:size]
        probability = (counts + 1.0) / (counts.sum() + size)
        self.log_sampling_probability.assign(np.log(probability).astype(np.float32))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training and self.loss_kind in SOFTMAX_LOSSES:
            # The softmax added in call(); the compiled pointwise loss does not
            # apply to positives-only rows. Validation (training=False) keeps it.
            return ops.sum([ops.cast(loss, "float32") for loss in self.losses])
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                    training=training)

    def click_probability(self, inputs):
        """Sigmoid of the click logit, the served score."""
        return ops.sigmoid(self(inputs, training=False))

    def get_config(self):
        config = super().get_config()
        config.update({
            "item_encoder": (keras.layers.serialize(self.item_encoder)
                             if self.item_encoder is not None else None),
            "num_items": self.num_items, "max_history": self.max_history,
            "embedding_dim": self.embedding_dim, "pooling": self.pooling,
            "user_layers": self.user_layers, "user_heads": self.user_heads,
            "user_intermediate_dim": self.user_intermediate_dim, "dropout": self.dropout,
            "loss": self.loss_kind, "max_interest": self.max_interest,
            "catalogue_size": self.catalogue_size,
            "deduplicate_items": self.deduplicate_items, "user_pooling": self.user_pooling,
            "text_vectors_shape": self.text_vectors_shape, "adapter": self.adapter,
            "adapter_experts": self.adapter_experts,
            "adapter_dropout": self.adapter_dropout, "similarity": self.similarity,
            "temperature": self.temperature, "text_top_layers": [dict(c) for c in self.text_top_layers],
            "text_tokens": self.text_tokens})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("item_encoder") is not None:
            config["item_encoder"] = keras.layers.deserialize(config["item_encoder"])
        return cls(**config)
