"""Explaining a two-tower model with the same methods as the cross-encoder.

Every method in this package edits one *packed row* (user side [SEP] item side, split into
words) and re-scores it (:class:`~bert_recommender.explainability.pair_scorer.PairScorer`). A two-tower model
reads separate texts instead: the query, each history item and the candidate, each encoded
on its own by the shared item encoder. :class:`TwoTowerScorer` writes those texts into one
row, so that words, erasure, sampling and gradients work unchanged, and turns the row back
into the model's inputs when it scores::

    [ id(h_1) ... id(h_H) id(c) | [CLS] query ; h_1 text ; ... ; h_k text [SEP] c text [SEP] ]
      prefix: item-id indices     the words the methods see and erase

* Slot of a word: the query is slot 0 (always present, possibly empty), the ``i``-th ``;``
  starts history slot ``i`` (most recent first), the item side is the candidate slot.
* Each slot becomes the ``[CLS] words [SEP]`` row its ``ItemTextTokenizer`` would give (the
  first ``L - 2`` pieces); a slot whose words were all erased becomes all ``[PAD]``: the
  model then sees the item as if its text were empty. Item ids (in the prefix) are not
  words: erasing words never removes them, so token methods explain the text's share of a
  hybrid model's score. History methods (leave-one-out, Shapley, counterfactuals) rebuild
  the user side without an item, which drops its id too.
* Gradient methods (integrated gradients, gradient x input) differentiate the item
  encoder's word-piece embeddings of every slot at once: the attributions of a history
  word include its effect through the user tower and the max-interest match.
* Attention rollout does not apply: there is no attention between the user side and the
  candidate (each text is encoded alone), so it is reported as not applicable.
* A frozen-text model (a table of vectors, no encoder) is read through
  :class:`FrozenTextView`, which re-encodes the slots with the checkpoint that wrote the
  table.

The ids of a row's texts come from the case being explained (:meth:`TwoTowerScorer.bind`):
the history items' and the impression's candidates' texts map to their ids.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from bert_recommender.explainability.pair_scorer import PairScorer
from bert_recommender.models.bert_recommender import backbone_from_token_embeddings

_EXTRA = 3  # [PAD], [CLS], [SEP] appended to each row's embeddings for the slot layout


class _SlotView:
    """The model interface the gradient methods call (``token_embeddings``,
    ``padding_mask``, ``logit_from_token_embeddings``, ``__call__``), over packed rows.

    ``padding_mask`` returns the row's token ids themselves: the methods pass it, tiled like
    the rows, to ``logit_from_token_embeddings``, which needs the ids to know each word's
    slot (the embeddings it receives may be interpolations with no ids of their own).
    """

    def __init__(self, model, scorer: "TwoTowerScorer"):
        self.model = model
        self.pooling = "two_tower"  # attention rollout's pooling switch does not apply
        self._scorer = scorer

    def token_embeddings(self, token_ids):
        # The prefix holds item-id indices, not word pieces: embed [PAD] there instead.
        token_ids = tf.cast(token_ids, tf.int32)
        prefix = self._scorer.prefix_length
        body = tf.concat([tf.zeros_like(token_ids[:, :prefix]), token_ids[:, prefix:]], 1)
        return self.model.token_embeddings(body)

    @staticmethod
    def padding_mask(token_ids):
        return tf.cast(token_ids, tf.int32)

    def logit_from_token_embeddings(self, token_embeddings, segment_ids, token_ids,
                                    training=False):
        s = self._scorer
        slot_ids, source = s.slot_layout(token_ids, segment_ids)
        prefix = s.prefix_length
        body = token_embeddings[:, prefix:]
        specials = self.model.token_embeddings(tf.constant([s.pad_id, s.cls_id, s.sep_id]))
        extended = tf.concat([body, tf.broadcast_to(
            tf.cast(specials, body.dtype)[None], [tf.shape(body)[0], _EXTRA,
                                                  tf.shape(body)[-1]])], axis=1)
        slot_embeddings = tf.gather(extended, source, batch_dims=1)
        ids = tf.cast(token_ids, tf.int32)
        return self.model.logit_from_slot_embeddings(
            slot_embeddings, slot_ids, history_index=ids[:, :s.max_history],
            item_index=ids[:, s.max_history], training=training)

    @property
    def trainable_variables(self):
        return self.model.trainable_variables

    def __call__(self, inputs, training=False):
        token_ids = tf.cast(inputs["token_ids"], tf.int32)
        if hasattr(self.model, "logit_from_slot_ids"):  # scoring only: no embeddings to vary
            s = self._scorer
            slot_ids, _ = s.slot_layout(token_ids, inputs["segment_ids"])
            return self.model.logit_from_slot_ids(
                slot_ids, history_index=token_ids[:, :s.max_history],
                item_index=token_ids[:, s.max_history], training=training)
        return self.logit_from_token_embeddings(self.token_embeddings(token_ids),
                                                inputs["segment_ids"], token_ids, training)


class SlotRowView:
    """Rows ``[ids of h_1..h_H, id of c | query slot | h_1 slot | ... | candidate slot]``
    (each slot the ``L`` token ids its ``ItemTextTokenizer`` gives) seen through the
    model interface of :mod:`bert_recommender.explainability.token_attributions`: what the SavedModel's
    ``explain`` signature differentiates. No slot layout to infer, so it runs in any graph.
    """

    def __init__(self, model, max_history: int, item_length: int):
        self.model = model
        self.max_history = max_history
        self.item_length = item_length

    @staticmethod
    def rows(inputs: dict):
        """Rows from the model inputs (``TwoTowerFeatures.from_text``)."""
        batch = tf.shape(inputs["item_token_ids"])[0]
        slots = tf.concat([inputs["query_token_ids"][:, None], inputs["history_token_ids"],
                           inputs["item_token_ids"][:, None]], axis=1)
        return tf.concat([tf.cast(inputs["history_index"], tf.int32),
                          tf.cast(inputs["item_index"], tf.int32)[:, None],
                          tf.reshape(tf.cast(slots, tf.int32), [batch, -1])], axis=1)

    def slot_ids(self, rows):
        """The ``[b, 2 + H, L]`` slot token ids of ``rows``."""
        return tf.reshape(rows[:, self.max_history + 1:],
                          [tf.shape(rows)[0], self.max_history + 2, self.item_length])

    def token_embeddings(self, token_ids):
        token_ids = tf.cast(token_ids, tf.int32)
        prefix = self.max_history + 1
        return self.model.token_embeddings(tf.concat(
            [tf.zeros_like(token_ids[:, :prefix]), token_ids[:, prefix:]], axis=1))

    @staticmethod
    def padding_mask(token_ids):
        return tf.cast(token_ids, tf.int32)  # the ids themselves (see _SlotView)

    def logit_from_token_embeddings(self, token_embeddings, segment_ids, token_ids,
                                    training=False):
        prefix = self.max_history + 1
        embeddings = tf.reshape(token_embeddings[:, prefix:], [
            tf.shape(token_embeddings)[0], self.max_history + 2, self.item_length,
            tf.shape(token_embeddings)[-1]])
        return self.model.logit_from_slot_embeddings(
            embeddings, self.slot_ids(token_ids), history_index=token_ids[:, :prefix - 1],
            item_index=token_ids[:, prefix - 1], training=training)


class FrozenTextView:
    """A frozen-text two-tower model (``model.kind: frozen_two_tower``) seen through the
    encoder interface :class:`TwoTowerScorer` reads (``item_encoder``,
    ``token_embeddings``, ``logit_from_slot_embeddings``).

    The model scores items from a table of vectors that the frozen checkpoint computed
    once; to explain words, this view recomputes the vectors of the texts in a row with
    that checkpoint from its word-piece embeddings (``PretrainedTextEncoder.pool`` over
    the backbone's output) and scores them with ``model.logit_from_text_vectors``. So
    gradients run through the frozen encoder, the adapter and the user tower, and erasing
    a word changes the vector the model reads, exactly as re-encoding the edited text
    would. The query slot (slot 0) is not read: the model has no query, and
    ``logit_from_text_vectors`` takes the history and candidate slots only. Empty slots
    (a short history) are not encoded, and every slot is cut to the row batch's longest
    text: the encoder masks padding, so neither changes a vector. Scoring without
    gradients (:meth:`logit_from_slot_ids`) encodes each distinct text of a batch once.

    Args:
      model: the ``TwoTowerRecommender`` holding the frozen text table.
      encoder: the ``PretrainedTextEncoder`` that wrote the table (same checkpoint, token
        limit and pooling).
    """

    def __init__(self, model, encoder):
        self.model = model
        self.encoder = encoder
        self.item_encoder = encoder.backbone

    def token_embeddings(self, token_ids):
        return self.item_encoder.token_embedding(token_ids)

    def logit_from_slot_ids(self, slot_token_ids, history_index, item_index,
                            training=False):
        """The logit of rows given as slot token ids (scoring, no gradients): each
        distinct text of the batch is encoded once. An erasure method's rows differ from
        the original in one text or a few, so most of their texts repeat."""
        slot_token_ids = tf.cast(slot_token_ids, tf.int32)
        batch, slots = tf.shape(slot_token_ids)[0], tf.shape(slot_token_ids)[1]
        flat_ids = tf.reshape(slot_token_ids, [batch * slots, -1])
        unique, position = tf.raw_ops.UniqueV2(x=flat_ids, axis=tf.constant([0], tf.int64))
        unique_embeddings = self.token_embeddings(unique)
        vectors = self._slot_vectors(unique_embeddings[None], unique[None])[0]
        text = tf.reshape(tf.gather(vectors, position), [batch, slots, -1])
        return self.model.logit_from_text_vectors(text[:, 1:], history_index, item_index,
                                                  training)

    def _slot_vectors(self, slot_embeddings, slot_token_ids):
        """The checkpoint's features ``[b, slots, F]`` of every present slot (zero for
        absent ones; pooled vectors, or the states below the model's trainable top
        layers), from word-piece embeddings ``[b, slots, L, h]``."""
        slot_token_ids = tf.cast(slot_token_ids, tf.int32)
        batch, slots, length = (tf.shape(slot_token_ids)[0], tf.shape(slot_token_ids)[1],
                                tf.shape(slot_token_ids)[2])
        flat_ids = tf.reshape(slot_token_ids, [-1, length])
        flat = tf.reshape(slot_embeddings, [-1, length, tf.shape(slot_embeddings)[-1]])
        where = tf.where(tf.reduce_any(tf.not_equal(flat_ids, 0), axis=-1))
        ids = tf.gather_nd(flat_ids, where)
        width = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(ids != 0, tf.int32), 1)), 1)
        ids = ids[:, :width]
        embeddings = tf.gather_nd(flat, where)[:, :width]
        sequence, _ = backbone_from_token_embeddings(
            self.item_encoder, embeddings, tf.zeros_like(ids), tf.cast(ids != 0, tf.int32),
            training=False, num_layers=self.encoder.frozen_layers)
        vectors = self.encoder.features(sequence, ids)
        return tf.reshape(tf.scatter_nd(where, vectors, [tf.shape(flat_ids)[0],
                                                         tf.shape(vectors)[-1]]),
                          [batch, slots, -1])

    def logit_from_slot_embeddings(self, slot_embeddings, slot_token_ids, history_index,
                                   item_index, training=False):
        text = self._slot_vectors(slot_embeddings, slot_token_ids)
        return self.model.logit_from_text_vectors(text[:, 1:], history_index, item_index,
                                                  training)

    @property
    def trainable_variables(self):
        return self.model.trainable_variables


class TwoTowerScorer(PairScorer):
    """A :class:`PairScorer` for a ``TwoTowerRecommender`` (see the module docstring).

    Args:
      model: the ``TwoTowerRecommender`` (with an item encoder: an id-only model has no
        words to explain).
      features: the run's ``TwoTowerFeatures`` (tokenizer, item ids, trained-id mask).
      batch_size: rows per forward pass.
      tokenizer: the ``ItemTextTokenizer`` that writes each slot (default:
        ``features.tokenizer``; a :class:`FrozenTextView` passes its checkpoint's).
    """

    query_slot_always = True
    #: history items are written with the text the item tower reads, not the title alone
    history_reads_item_text = True
    not_applicable = {"attention_rollout": "a two-tower model has no attention between the "
                                           "user side and the candidate: each text is "
                                           "encoded on its own"}

    def __init__(self, model, features, batch_size: int = 256, tokenizer=None):
        tokenizer = tokenizer if tokenizer is not None else features.tokenizer
        if getattr(model, "item_encoder", None) is None or tokenizer is None:
            raise ValueError("an id-only two-tower model (model.kind=sasrec) reads no text: "
                             "there are no words to explain")
        self.features = features
        self.batch_size = batch_size
        self.packer = None
        self.max_history = features.max_history
        self.item_length = tokenizer.sequence_length
        self.prefix_length = self.max_history + 1
        self._set_tokenizer(tokenizer.tokenizer)
        index = np.arange(len(features.item_ids)) * features.trained_mask
        self._index_of_id = dict(zip(features.item_ids[1:], index[1:].tolist()))
        self._id_of_text: dict = {}
        # The graph tokenizer, as in ItemTextTokenizer (eager keras-hub tokenizers take a
        # separate pure-Python path).
        self._tokenize = tf.function(self.tokenizer, reduce_retracing=True)
        self.model = _SlotView(model, self)
        self._logits = tf.function(
            lambda ids, seg: tf.cast(self.model({"token_ids": ids, "segment_ids": seg}),
                                     tf.float32), reduce_retracing=True)

    def compose(self, query: str, texts: list) -> str:
        """The user side this scorer reads: ``query ; newest ; ... ; oldest`` of the ``H``
        most recent ``texts`` (given oldest first); the query part is kept when empty."""
        recent = list(texts)[-self.max_history:] if self.max_history > 0 else []
        return HISTORY_SEPARATOR_TEXT.join([(query or "").strip()] + recent[::-1])

    # -- ids ---------------------------------------------------------------------------

    def bind(self, case) -> None:
        """Maps the case's history texts and its impression's candidate texts to their
        ids, so that rows written from texts carry the items' id features."""
        pairs = list(zip([i for i, _ in case.history], case.history_model_texts()))
        pairs += [(case.candidate_id, case.candidate_text)] + list(case.others)
        self._id_of_text = {text: item_id for item_id, text in pairs}

    def _index(self, text: str) -> int:
        return int(self._index_of_id.get(self._id_of_text.get(text, ""), 0))

    # -- packing -----------------------------------------------------------------------

    @property
    def sequence_length(self) -> int:
        words = self.item_length - 2
        return self.prefix_length + 1 + words + self.max_history * (1 + words) + 1 + words + 1

    def pack(self, user_texts, item_texts) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the module docstring's layout: ``(token_ids, segment_ids)``, int32
        ``[n, sequence_length]``; the user side is ``query ; newest ; ... ; oldest``."""
        user_texts, item_texts = list(user_texts), list(item_texts)
        parts = [u.split(HISTORY_SEPARATOR_TEXT) for u in user_texts]
        parts = [p[:1 + self.max_history] for p in parts]
        texts = [t for p in parts for t in p] + item_texts
        pieces = self._pieces(texts)
        rows = np.zeros([len(user_texts), self.sequence_length], np.int32)
        segments = np.zeros_like(rows)
        at = 0
        for row, (user_parts, item_text) in enumerate(zip(parts, item_texts)):
            user_pieces = pieces[at:at + len(user_parts)]
            at += len(user_parts)
            ids = [0] * self.max_history + [self._index(item_text)]
            for slot, text in enumerate(user_parts[1:]):
                ids[slot] = self._index(text.strip())
            tokens = [self.cls_id]
            for slot, slot_pieces in enumerate(user_pieces):
                if slot:
                    tokens.append(self.separator_id)
                tokens += slot_pieces
            tokens.append(self.sep_id)
            user_length = len(tokens)
            tokens += pieces[len(texts) - len(item_texts) + row] + [self.sep_id]
            full = ids + tokens
            rows[row, :len(full)] = full
            segments[row, self.prefix_length + user_length:len(full)] = 1
        return rows, segments

    def _pieces(self, texts: list) -> list:
        """Each text's word-piece ids, cut to what the item tower reads."""
        if not texts:
            return []
        ragged = self._tokenize(tf.constant([t.strip() for t in texts]))
        return [[int(i) for i in r[: self.item_length - 2]] for r in ragged.to_list()]

    # -- the slot layout, in the graph -------------------------------------------------

    def slot_layout(self, token_ids, segment_ids):
        """Per packed row: the ``[2 + H, L]`` token ids of every slot (query, history
        most recent first, candidate) and, per slot position, the index into the row's
        body (after the prefix) it takes its embedding from (``body length + 0/1/2`` for
        [PAD]/[CLS]/[SEP])."""
        ids = tf.cast(token_ids, tf.int32)[:, self.prefix_length:]
        segments = tf.cast(segment_ids, tf.int32)[:, self.prefix_length:]
        batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
        slots, width = self.max_history + 2, self.item_length
        user = tf.equal(segments, 0)
        separator = tf.logical_and(user, tf.equal(ids, self.separator_id))
        slot = tf.where(user, tf.cumsum(tf.cast(separator, tf.int32), axis=1), slots - 1)
        word = tf.logical_not(tf.reduce_any(tf.equal(
            ids[..., None], tf.constant([self.pad_id, self.cls_id, self.sep_id])), axis=-1))
        word = tf.logical_and(tf.logical_and(word, tf.logical_not(separator)), slot < slots)
        one_hot = tf.one_hot(tf.minimum(slot, slots - 1), slots, dtype=tf.int32) * \
            tf.cast(word, tf.int32)[..., None]
        rank = tf.reduce_sum(tf.cumsum(one_hot, axis=1) * one_hot, axis=-1)  # 1-based
        kept = tf.logical_and(word, rank <= width - 2)
        count = tf.reduce_sum(one_hot * tf.cast(kept, tf.int32)[..., None], axis=1)  # [b, s]
        pad, cls, sep = length, length + 1, length + 2
        position = tf.range(width)[None, None, :]
        count3 = count[..., None]
        source = tf.where(tf.logical_and(position == 0, count3 > 0), cls, pad)
        source = tf.where(tf.logical_and(position == count3 + 1, count3 > 0), sep, source)
        where = tf.where(kept)  # [k, 2]: (row, body position)
        updates = tf.gather_nd(tf.stack([slot, rank], -1), where)
        source = tf.tensor_scatter_nd_update(
            source, tf.concat([where[:, :1], tf.cast(updates, tf.int64)], axis=1),
            tf.cast(where[:, 1], tf.int32))
        extended_ids = tf.concat([ids, tf.broadcast_to(
            tf.constant([self.pad_id, self.cls_id, self.sep_id]), [batch, _EXTRA])], axis=1)
        slot_ids = tf.gather(extended_ids, source, batch_dims=1)
        return slot_ids, source


# Joins the parts of the user side; explainability does not import the trainer, so this
# repeats trainer.data.input_pipeline.USER_SIDE_SEPARATOR (tests/explainability checks they agree).
HISTORY_SEPARATOR_TEXT = " ; "
