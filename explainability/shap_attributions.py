"""SHAP word attributions with shap's Partition explainer and a Text masker over our words.

``shap`` is an optional extra (``pip install -e ".[explain]"``) and is imported lazily, so
the rest of :mod:`bert_recommender.explainability` works without it.

How the pieces fit (shap 0.51):

* **Text and tokenizer.** The words of one packed row (:meth:`PairScorer.words`) are laid
  out as one string, ``query words ; title words ; ... [SEP] item words``, and
  ``shap.maskers.Text`` gets a tokenizer callable whose tokens are exactly those words
  (``input_ids`` = word index, ``offset_mapping`` = where each word sits in the string). The
  ``;`` and ``[SEP]`` markers are not tokens, so shap never treats them as features: the
  explanation has one value per entry of ``words``, in order. (shap glues the text between
  two tokens onto the first one, so a marker rides along with the word before it; it is
  only there to make the string readable, the structure itself comes from ``words``.)
* **Masking = erasing.** The masker replaces each hidden word by a mask token that occurs
  nowhere in the string, one per word (``collapse_mask_token=False``), so the model function
  can read back, word by word, which words were hidden (:func:`_erased_words`). It turns
  each batch shap sends into a bool "erased" matrix and scores it in one call of
  :meth:`PairScorer.erase` + :meth:`PairScorer.probabilities`: a hidden word is deleted
  and the gap closed, exactly as in occlusion and the other erasure-based explainers, so
  the values are on the same scale (click probability) and the same perturbation. The
  mask token itself never reaches the model.
* **Hierarchy.** The Text masker's own ``clustering`` is a heuristic over the whole string
  that knows nothing of our separators, so it could put the end of the query and the start
  of a history title in one coalition. :class:`_WordTextMasker` overrides it with a tree
  that follows the pair's structure: the words of each part (the query, each history title,
  the item text) are grouped with shap's own text heuristic (``partition_tree``, the one
  ``Text.clustering`` uses), the user-side parts are merged neighbour by neighbour (the
  smallest adjacent pair first, as that heuristic does), and the root splits user side from
  item side. The explainer computes Owen values for this tree.

Why a Text masker rather than a masker that hands the binary mask to the model directly:
the issue asks for shap's text path, and with the one-mask-token-per-word round trip the
mask is recovered exactly (the decoder checks every kept word against the original), so
nothing is lost; the cost is a string per evaluation, negligible next to a forward pass.

Efficiency: Partition values are additive, ``sum(values) == f(all words) - f(no words)``
up to round-off, whatever ``max_evals`` is (credit left on unexpanded tree nodes is split
evenly over their words). ``max_evals`` caps the masked inputs shap asks for (two of them
are the full and the empty input); the number actually scored is returned.
"""

from __future__ import annotations

import contextlib

import numpy as np

from bert_recommender.explainability.pair_scorer import ITEM, USER, PairScorer, Word

PART_MARKER = ";"  # between the query and history titles (as in the user-side text)
SEGMENT_MARKER = "[SEP]"  # between the user side and the item side
# Masked inputs per model call: big enough to batch the forward pass, small enough that
# shap's priority queue still expands the nodes with the largest effects first when
# max_evals cuts the recursion short.
SHAP_BATCH_SIZE = 64


def shap_word_attributions(scorer: PairScorer, token_ids: np.ndarray, segment_ids: np.ndarray,
                           words: list[Word], max_evals: int = 256,
                           seed: int = 0) -> tuple[np.ndarray, int]:
    """SHAP values (on the click probability) of each word in ``words`` (one packed row).

    Runs ``shap.PartitionExplainer`` with a ``shap.maskers.Text`` masker whose tokens are
    exactly ``words`` and whose hidden words are erased as by :meth:`PairScorer.erase`
    (see the module docstring for the layout, the round trip and the tree).

    Args:
      scorer: the :class:`PairScorer` of the model to explain.
      token_ids, segment_ids: one packed row (``[sequence_length]``).
      words: ``scorer.words(token_ids, segment_ids, ...)`` for that row.
      max_evals: the most masked inputs shap may ask for (at least 2: the full and the
        empty input). With fewer than the tree needs, the unexpanded coalitions' credit is
        shared evenly by their words; the values still add up.
      seed: seeds the tie-breaking in shap's expansion queue (it draws from NumPy's global
        generator, whose state is restored afterwards), so equal seeds give equal values.

    Returns:
      ``(values, evaluations)``: float64 ``[len(words)]`` with ``values.sum() ==
      f(all words) - f(no words)``, and the number of variants scored by the model
      (at most ``max_evals``; shap skips a mask identical to the one before it).

    Raises:
      ImportError: ``shap`` is not installed.
    """
    shap = require_shap()
    if max_evals < 2:
        raise ValueError(f"max_evals must be at least 2 (the full and the empty input), "
                         f"got {max_evals}")
    token_ids, segment_ids = np.asarray(token_ids), np.asarray(segment_ids)
    if not words:
        return np.zeros([0], np.float64), 0

    text, offsets = _layout(words)
    mask_token = _unused_token(text)
    # What shap's Text masker emits for each word when it is kept: the word's segment (the
    # text up to the next word, so the word and any marker after it), as whitespace-separated
    # pieces since the masker collapses runs of whitespace.
    ends = [max(end, next_start) for (_, end), (next_start, _) in zip(offsets, offsets[1:])]
    kept_pieces = [text[start:end].split()
                   for (start, _), end in zip(offsets, ends + [offsets[-1][1]])]
    evaluations = 0

    def click_probability(masked_texts) -> np.ndarray:
        nonlocal evaluations
        erased = np.array([_erased_words(str(masked), kept_pieces, mask_token)
                           for masked in masked_texts], dtype=bool).reshape(-1, len(words))
        evaluations += len(erased)
        return scorer.scores(*scorer.erase(token_ids, segment_ids, words, erased))

    masker = _word_text_masker(shap, _WordTokenizer(text, offsets), mask_token,
                               _word_tree(words))
    explainer = shap.PartitionExplainer(click_probability, masker)
    with _seeded_numpy(seed):
        explanation = explainer([text], max_evals=max_evals, batch_size=SHAP_BATCH_SIZE,
                                fixed_context=None, silent=True)
    values = np.asarray(explanation.values[0], dtype=np.float64)
    if values.shape != (len(words),):  # would mean shap saw other tokens than our words
        raise RuntimeError(f"shap returned {values.shape} values for {len(words)} words")
    return values, evaluations


def require_shap():
    """The ``shap`` module, or an ImportError saying how to install the optional extra."""
    try:
        import shap  # noqa: PLC0415 (optional extra, imported only when SHAP is asked for)
    except ImportError as error:
        raise ImportError('SHAP attributions need the optional "shap" package: '
                          'pip install -e ".[explain]"') from error
    return shap


# -- the string shap masks ------------------------------------------------------------


def _layout(words: list[Word]) -> tuple[str, list[tuple[int, int]]]:
    """One string holding every word, with markers between parts, and each word's span."""
    text, offsets, previous = "", [], None
    for word in words:
        group = (word.segment, word.part)
        if previous is not None:
            if group != previous:
                text += f" {SEGMENT_MARKER if word.segment == ITEM else PART_MARKER}"
            text += " "
        offsets.append((len(text), len(text) + len(word.text)))
        text += word.text
        previous = group
    return text, offsets


def _unused_token(text: str) -> str:
    """A mask token that occurs nowhere in ``text``, so where it appears is unambiguous."""
    token = "[ERASED]"
    while token in text:
        token = f"_{token}_"
    return token


def _erased_words(masked: str, kept_pieces: list[list[str]], mask_token: str) -> list[bool]:
    """Which words a masked string hides: one mask token per hidden word, in order.

    Read with a cursor, not by splitting on whitespace: shap replaces a hidden word's
    segment (the word and the space after it) by ``" " + mask_token``, so a mask token is
    glued to the kept word after it (``"[ERASED]globex"``). A kept word is always followed
    by whitespace or the end, and the mask token is no substring of the original text, so
    each step has one reading; every kept word is checked against the original.
    """
    position, erased = 0, []

    def skip_space(at: int) -> int:
        while at < len(masked) and masked[at].isspace():
            at += 1
        return at

    for word_pieces in kept_pieces:
        position = skip_space(position)
        if masked.startswith(mask_token, position):
            erased.append(True)
            position += len(mask_token)
            continue
        for piece in word_pieces:
            position = skip_space(position)
            if not masked.startswith(piece, position):
                raise ValueError(f"cannot align shap's masked text with the words: {masked!r}")
            position += len(piece)
        erased.append(False)
    if skip_space(position) != len(masked):
        raise ValueError(f"shap's masked text has more than the words: {masked!r}")
    return erased


class _WordTokenizer:
    """The tokenizer shap's Text masker calls: our words are its tokens.

    On the laid-out string it returns the word spans computed with it, so token ``i`` is
    ``words[i]`` by construction (no re-tokenisation that could disagree with WordPiece).
    The masker also probes it with other strings (``""`` to find special prefix/suffix
    tokens, which we have none of, and the mask token); those are split on whitespace.
    """

    def __init__(self, text: str, offsets: list[tuple[int, int]]):
        self.text, self.offsets = text, list(offsets)

    def __call__(self, s, return_offsets_mapping=True):
        if s == self.text:
            out = {"input_ids": list(range(len(self.offsets))), "offset_mapping": self.offsets}
        else:
            spans, position = [], 0
            for piece in s.split():
                start = s.index(piece, position)
                spans.append((start, start + len(piece)))
                position = start + len(piece)
            out = {"input_ids": [-1] * len(spans), "offset_mapping": spans}
        if not return_offsets_mapping:
            out.pop("offset_mapping")
        return out


def _word_text_masker(shap, tokenizer: _WordTokenizer, mask_token: str, tree: np.ndarray):
    """A ``shap.maskers.Text`` over our words whose clustering is the pair-structured tree."""

    class _WordTextMasker(shap.maskers.Text):
        def clustering(self, s):
            if s != tokenizer.text:
                raise ValueError("this masker only explains the string it was built for")
            return tree

    return _WordTextMasker(tokenizer, mask_token=mask_token, collapse_mask_token=False)


# -- the coalition tree ---------------------------------------------------------------


def _word_tree(words: list[Word]) -> np.ndarray:
    """A scipy-style linkage ``[len(words) - 1, 4]`` following the pair's structure.

    Rows are ``(left, right, height, leaves)``; leaves are word indices and row ``k`` is
    node ``len(words) + k``. Heights are the node's share of the words, as
    ``Text.clustering`` rescales them (any positive height lets the explainer split the
    node; only the leaf counts matter for how unexpanded credit is shared).
    """
    num_words = len(words)
    rows, sizes = [], {i: 1 for i in range(num_words)}

    def merge(left: int, right: int) -> int:
        node = num_words + len(rows)
        sizes[node] = sizes[left] + sizes[right]
        rows.append([left, right, sizes[node] / num_words, sizes[node]])
        return node

    def merge_neighbours(nodes: list[int]) -> int:
        nodes = list(nodes)
        while len(nodes) > 1:
            pair = int(np.argmin([sizes[a] + sizes[b] for a, b in zip(nodes, nodes[1:])]))
            nodes[pair:pair + 2] = [merge(nodes[pair], nodes[pair + 1])]
        return nodes[0]

    def merge_part(indices: list[int]) -> int:
        if len(indices) == 1:
            return indices[0]
        local = _text_partition_tree([words[i].text for i in indices])
        if local is None:
            return merge_neighbours(indices)
        ids = list(indices)  # local node id -> global node id
        for left, right, _, _ in local:
            ids.append(merge(ids[int(left)], ids[int(right)]))
        return ids[-1]

    parts: dict = {}
    for index, word in enumerate(words):
        parts.setdefault((word.segment, word.part), []).append(index)
    # Words come in position order, so parts (and sides) are contiguous and in order.
    sides = []
    for side in (USER, ITEM):
        nodes = [merge_part(ix) for (segment, _), ix in parts.items() if segment == side]
        if nodes:
            sides.append(merge_neighbours(nodes))
    merge_neighbours(sides)
    return np.array(rows, dtype=np.float64).reshape(max(num_words - 1, 0), 4)


def _text_partition_tree(texts: list[str]):
    """shap's sentence heuristic over one part's words (None if shap moved it)."""
    try:
        from shap.maskers._text import partition_tree  # noqa: PLC0415 (private in shap 0.51)
    except ImportError:
        return None
    return partition_tree(texts, [])


@contextlib.contextmanager
def _seeded_numpy(seed: int):
    # shap breaks ties in its expansion queue with np.random.randn(): seed the global
    # generator for the call and give the caller's state back.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
