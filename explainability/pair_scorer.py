"""Scores (user side, candidate) text pairs and edits them at the level of words.

Every explainer in this package perturbs what the model saw and re-scores it, so they share
one :class:`PairScorer`: it packs text with the model's own :class:`TextPairPacker` (the
layer that runs in tf.data and in the SavedModel), groups WordPiece pieces back into
:class:`Word` s, and scores batches of token ids.

*Erasing* a word removes its pieces from the sequence and closes the gap (the tail shifts
left and is padded), as ERASER does: the model then sees the pair as if the word had never
been written. Only words are erased; ``[CLS]``, ``[SEP]`` and the ``;`` that separates the
query and history titles on the user side stay, so the pair keeps its structure.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

USER, ITEM = "user", "item"
HISTORY_SEPARATOR = ";"  # what input_pipeline.USER_SIDE_SEPARATOR tokenizes to


@dataclasses.dataclass(frozen=True)
class Word:
    """A whole word of the packed pair: its text, segment, part and token positions.

    ``part`` locates it on the user side: -1 for the query, ``i`` for the ``i``-th history
    title shown (most recent first, as the user side is written); always 0 on the item side.
    """

    text: str
    segment: str
    part: int
    positions: tuple

    def as_dict(self) -> dict:
        return {"text": self.text, "segment": self.segment, "part": self.part}


class PairScorer:
    """Scores (click probabilities, or logits: :attr:`target`) of packed pairs under a
    :class:`BERTRecommender`.

    Args:
      model: a ``BERTRecommender`` (anything with ``token_embeddings`` and
        ``logit_from_token_embeddings``, called on ``{"token_ids", "segment_ids"}``).
      packer: the run's ``TextPairPacker``.
      batch_size: rows per forward pass when scoring many variants.
    """

    #: leading positions of a packed row that hold no words (never grouped or erased)
    prefix_length = 0
    #: the user side always starts with a query part (possibly empty)
    query_slot_always = False
    #: token methods that cannot apply to this scorer's model, with the reason
    not_applicable: dict = {}
    #: the explained quantity, one of ``TARGETS``: ``probability`` (the sigmoid of the
    #: logit: a click probability for a model trained pointwise) or ``logit`` (the ranking
    #: score of a model trained with a softmax, whose sigmoid is no probability and
    #: saturates: faithfulness curves on it would be flat)
    target = "probability"

    def __init__(self, model, packer, batch_size: int = 256):
        self.model = model
        self.packer = packer
        self.batch_size = batch_size
        self._set_tokenizer(packer.tokenizer)
        self._logits = tf.function(
            lambda ids, seg: tf.cast(model({"token_ids": ids, "segment_ids": seg},
                                           training=False), tf.float32),
            reduce_retracing=True)

    def _set_tokenizer(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.vocabulary = np.array(tokenizer.get_vocabulary(), dtype=object)
        token_id = tokenizer.token_to_id
        self.cls_id, self.sep_id = token_id("[CLS]"), token_id("[SEP]")
        self.pad_id, self.mask_id = token_id("[PAD]"), token_id("[MASK]")
        # Runs trained before ";" was reserved map it to [UNK]; tokenizing it finds either.
        self.separator_id = int(tokenizer(tf.constant([HISTORY_SEPARATOR]))[0][0])

    def bind(self, case) -> None:
        """Called before a case is explained; a scorer that needs more than the texts
        (the two-tower scorer's item ids) takes it from the case here."""

    # -- packing -----------------------------------------------------------------------

    def pack(self, user_texts, item_texts) -> tuple[np.ndarray, np.ndarray]:
        """``(token_ids, segment_ids)``, int32 ``[n, sequence_length]``."""
        packed = self.packer(tf.constant(list(user_texts)), tf.constant(list(item_texts)))
        return packed["token_ids"].numpy(), packed["segment_ids"].numpy()

    def tokens(self, token_ids: np.ndarray) -> list:
        """The token strings of one packed row (padding included)."""
        return [str(t) for t in self.vocabulary[np.asarray(token_ids)]]

    def words(self, token_ids: np.ndarray, segment_ids: np.ndarray,
              has_query: bool) -> list[Word]:
        """Groups one packed row's pieces into words (a ``##`` piece continues a word).

        ``has_query`` says whether the user side starts with a query, so that ``part``
        counts history titles from 0 either way.
        """
        words, current = [], None
        part = -1 if has_query or self.query_slot_always else 0
        for position, (token_id, segment) in enumerate(zip(token_ids, segment_ids)):
            if position < self.prefix_length:
                continue
            token_id = int(token_id)
            if token_id in (self.pad_id, self.cls_id, self.sep_id):
                current = None
                continue
            side = ITEM if segment else USER
            if side == USER and token_id == self.separator_id:
                part += 1
                current = None
                continue
            piece = str(self.vocabulary[token_id])
            if piece.startswith("##") and current is not None:
                current["text"] += piece[2:]
                current["positions"].append(position)
                continue
            current = {"text": piece, "segment": side, "part": part if side == USER else 0,
                       "positions": [position]}
            words.append(current)
        return [Word(w["text"], w["segment"], w["part"], tuple(w["positions"]))
                for w in words]

    # -- editing -----------------------------------------------------------------------

    def erase(self, token_ids: np.ndarray, segment_ids: np.ndarray, words: list[Word],
              erased: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Variants of one packed row with some words removed.

        ``erased`` is a bool ``[num_variants, len(words)]`` matrix; row ``v`` removes the
        words flagged in it. Returns ``(token_ids, segment_ids)`` of shape
        ``[num_variants, sequence_length]``.
        """
        erased = np.atleast_2d(np.asarray(erased, dtype=bool))
        length = len(token_ids)
        keep = np.ones((len(erased), length), dtype=bool)
        for index, word in enumerate(words):
            keep[np.ix_(erased[:, index], list(word.positions))] = False
        out_ids = np.zeros((len(erased), length), dtype=np.int32)
        out_segments = np.zeros((len(erased), length), dtype=np.int32)
        for row, mask in enumerate(keep):
            kept = int(mask.sum())
            out_ids[row, :kept] = token_ids[mask]
            out_segments[row, :kept] = segment_ids[mask]
        return out_ids, out_segments

    # -- scoring -----------------------------------------------------------------------

    def logits(self, token_ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
        """Click logits of packed rows, in batches of ``batch_size``."""
        token_ids = np.atleast_2d(token_ids).astype(np.int32)
        segment_ids = np.atleast_2d(segment_ids).astype(np.int32)
        out = [self._logits(tf.constant(token_ids[i:i + self.batch_size]),
                            tf.constant(segment_ids[i:i + self.batch_size])).numpy()
               for i in range(0, len(token_ids), self.batch_size)]
        return np.concatenate(out) if out else np.zeros([0], np.float32)

    def probabilities(self, token_ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
        """Click probabilities (sigmoid of :meth:`logits`): the score that is explained."""
        return 1.0 / (1.0 + np.exp(-self.logits(token_ids, segment_ids).astype(np.float64)))

    def scores(self, token_ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
        """The explained quantity (:attr:`target`) of packed rows, float64."""
        if self.target == "logit":
            return self.logits(token_ids, segment_ids).astype(np.float64)
        return self.probabilities(token_ids, segment_ids)

    def score_texts(self, user_texts, item_texts) -> np.ndarray:
        """The explained quantity (:attr:`target`) of raw text pairs."""
        if len(user_texts) == 0:
            return np.zeros([0])
        return self.scores(*self.pack(user_texts, item_texts))
