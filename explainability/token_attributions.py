"""Token attributions for one (user side, candidate) pair, aggregated to words.

Methods (each returns one score per token position of the packed pair; :func:`to_words`
sums a word's pieces):

* :func:`integrated_gradients` (Sundararajan et al., 2017) on the word-piece embeddings,
  from a baseline where every word piece is replaced by the [PAD] (or [MASK]) embedding
  while [CLS]/[SEP], positions, segments and the attention mask stay. All ``steps``
  interpolation points (plus the input and the baseline) run as *one* batch, so the cost is
  about one batched forward + backward pass. The path integral uses Gauss-Legendre
  quadrature (Captum's default), far more accurate than a Riemann sum at the same number of
  steps; completeness (sum of attributions vs f(x) - f(baseline)) is returned with the
  attributions so the error is always reported. With ``tolerance=`` the number of steps is
  chosen per example: rows whose completeness error is above the tolerance are recomputed
  with twice the steps (all steps of a row still in one batch) up to ``max_steps``, and
  each row reports the steps it used and whether it converged.
* :func:`gradient_x_input`: the gradient at the input times the embedding.
* :func:`attention_rollout` (Abnar & Zuidema, 2020): head-averaged attention with the
  residual (0.5 A + 0.5 I), multiplied through the layers; the row that feeds the pooled
  vector ([CLS] for cls/first pooling, the mean over tokens for mean pooling) gives the
  relevance. Non-negative and unsigned: it says where the model looked, not which way.
* :func:`occlusion`: leave one word out (erased, see :mod:`pair_scorer`) and re-score.
* :func:`random_attributions`: the seeded baseline every faithfulness metric is compared to.

The explained quantity is the scorer's ``target``: the click probability (the served score)
of a pointwise model, the logit of a softmax-trained one (``PairScorer.target``).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from bert_recommender.explainability.pair_scorer import PairScorer, Word

TARGETS = ("probability", "logit")
BASELINES = ("pad", "mask")
# The adaptive mode's defaults: the explainer promises a completeness error under 1%;
# doubling from 32 reaches 512 in four retries, which bounds an example that never
# converges to about 31x the cost of the first try (32 + 64 + ... + 512 = 992 steps).
DEFAULT_TOLERANCE = 0.01
DEFAULT_MAX_STEPS = 512


@functools.lru_cache(maxsize=32)
def quadrature(steps: int, rule: str = "gauss_legendre") -> tuple[np.ndarray, np.ndarray]:
    """Interpolation points ``alpha`` in (0, 1) and their weights (summing to 1), as
    read-only arrays.

    Cached: numpy finds the Gauss-Legendre nodes as the eigenvalues of a ``steps x steps``
    matrix, which costs more than the integrated gradients themselves at a few hundred
    steps (measured on 2 CPU cores: 0.3 s at 256 steps, 0.7 s at 512, against 0.34 s for
    the 512-step gradients of the demo model)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if rule == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (nodes + 1.0) / 2.0, weights / 2.0
    elif rule == "riemann_middle":
        alphas, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    else:
        raise ValueError(f"unknown quadrature rule {rule!r}; use gauss_legendre or "
                         "riemann_middle")
    alphas.flags.writeable = weights.flags.writeable = False  # shared by every caller
    return alphas, weights


def _target(logits, target):
    return tf.sigmoid(logits) if target == "probability" else logits


@functools.lru_cache(maxsize=8)
def _path_gradients_fn(model, target: str):
    """A compiled ``(token_ids, segment_ids, baseline_ids [B, L], alphas, weights [S]) ->
    (IG attributions [B, L], gradient x input [B, L], f(x) [B], f(baseline) [B])``;
    one traced graph per model and target."""

    @tf.function(reduce_retracing=True)
    def path_gradients(token_ids, segment_ids, baseline_ids, alphas, weights):
        batch, length = tf.shape(token_ids)[0], tf.shape(token_ids)[1]
        steps = tf.shape(alphas)[0]
        inputs = tf.cast(model.token_embeddings(token_ids), tf.float32)
        baseline = tf.cast(model.token_embeddings(baseline_ids), tf.float32)
        delta = inputs - baseline
        # [S, B, L, H] interpolations, flattened into one batch with the input and baseline.
        path = baseline[None] + alphas[:, None, None, None] * delta[None]
        path = tf.reshape(path, [-1, length, tf.shape(inputs)[-1]])
        embeddings = tf.concat([path, inputs, baseline], axis=0)
        rows = steps + 2
        segments = tf.tile(segment_ids, [rows, 1])
        mask = tf.tile(model.padding_mask(token_ids), [rows, 1])
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            scores = _target(tf.cast(model.logit_from_token_embeddings(
                embeddings, segments, mask), tf.float32), target)
        grads = tape.gradient(scores, embeddings)
        path_grads = tf.reshape(grads[: steps * batch], [steps, batch, length, -1])
        mean_grad = tf.einsum("s,sblh->blh", weights, path_grads)
        attributions = tf.reduce_sum(delta * mean_grad, axis=-1)
        input_grad = grads[steps * batch: (steps + 1) * batch]
        grad_x_input = tf.reduce_sum(inputs * input_grad, axis=-1)
        scores = tf.reshape(scores, [rows, batch])
        return attributions, grad_x_input, scores[steps], scores[steps + 1]

    return path_gradients


def baseline_ids(token_ids, special_ids, fill_id: int):
    """``token_ids`` (tensor or array) with every word piece set to ``fill_id``; the
    ``special_ids`` ([PAD], [CLS], [SEP]) stay. Works in a graph (the SavedModel's
    ``explain`` signature) and eagerly."""
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    special = tf.reduce_any(tf.equal(token_ids[..., None],
                                     tf.constant(list(special_ids), tf.int32)), axis=-1)
    return tf.where(special, token_ids, tf.fill(tf.shape(token_ids), fill_id))


def integrated_gradients_tensors(model, token_ids, segment_ids, special_ids, fill_id: int,
                                 steps: int = 32, target: str = "probability",
                                 rule: str = "gauss_legendre") -> dict:
    """Integrated gradients as tensors, for packed rows ``[B, L]`` of ``model``.

    Returns ``attributions`` and ``gradient_x_input`` (``[B, L]``), ``score`` f(x) and
    ``baseline_score`` f(baseline) (``[B]``). Used eagerly by :func:`integrated_gradients`
    and traced into the SavedModel's ``explain`` signature, so both compute the same thing.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    alphas, weights = quadrature(steps, rule)
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    attributions, grad_x_input, score, base_score = _path_gradients_fn(model, target)(
        token_ids, tf.convert_to_tensor(segment_ids, tf.int32),
        baseline_ids(token_ids, special_ids, fill_id),
        tf.constant(alphas, tf.float32), tf.constant(weights, tf.float32))
    return {"attributions": attributions, "gradient_x_input": grad_x_input, "score": score,
            "baseline_score": base_score}


def integrated_gradients(scorer: PairScorer, token_ids: np.ndarray, segment_ids: np.ndarray,
                         steps: int = 32, baseline: str = "pad", target: str | None = None,
                         rule: str = "gauss_legendre", tolerance: float | None = None,
                         max_steps: int = DEFAULT_MAX_STEPS) -> dict:
    """Integrated gradients for packed rows ``[B, L]`` (or one row ``[L]``).

    ``baseline`` replaces every word piece by the ``[PAD]`` or ``[MASK]`` embedding;
    ``target`` (default: the scorer's) is the explained quantity.

    Steps: with ``tolerance=None`` (the default) every row uses exactly ``steps``. With a
    ``tolerance`` (e.g. :data:`DEFAULT_TOLERANCE`, 1 %) the steps are adaptive, as
    attribution libraries check their convergence delta: every row starts at ``steps``;
    the rows whose ``completeness_error`` is still above ``tolerance`` are recomputed
    together with twice the steps (capped at ``max_steps``) until they are under it or
    ``max_steps`` has been tried. A row that never gets under it keeps its last (most
    steps) result and is reported with ``converged`` False, never dropped.

    Returns a dict of numpy arrays: ``attributions`` and ``gradient_x_input`` (``[B, L]``),
    ``score`` f(x) and ``baseline_score`` f(baseline) (``[B]``), ``completeness_error``
    = |sum(attributions) - (f(x) - f(baseline))| / |f(x) - f(baseline)|, the unscaled
    ``absolute_error`` |sum(attributions) - (f(x) - f(baseline))| (the relative error of a
    row whose score barely moves from the baseline is large even when this is tiny) and
    ``steps``, the steps each row used (``[B]``); with a ``tolerance`` also ``converged``
    (``[B]`` bool: ``completeness_error <= tolerance``).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if tolerance is not None:
        if not tolerance > 0:
            raise ValueError(f"tolerance must be > 0 (or None for fixed steps), got {tolerance!r}")
        if max_steps < steps:
            raise ValueError(f"max_steps ({max_steps}) must be at least steps ({steps})")
    single = np.ndim(token_ids) == 1
    token_ids, segment_ids = np.atleast_2d(token_ids), np.atleast_2d(segment_ids)
    target = target or scorer.target

    def run(rows: np.ndarray, row_steps: int) -> dict:
        out = integrated_gradients_tensors(
            scorer.model, token_ids[rows], segment_ids[rows],
            special_ids=(scorer.pad_id, scorer.cls_id, scorer.sep_id),
            fill_id=scorer.pad_id if baseline == "pad" else scorer.mask_id, steps=row_steps,
            target=target, rule=rule)
        out = {k: v.numpy().astype(np.float64) for k, v in out.items()}
        difference = out["score"] - out["baseline_score"]
        out["absolute_error"] = np.abs(out["attributions"].sum(-1) - difference)
        out["completeness_error"] = out["absolute_error"] / np.maximum(np.abs(difference),
                                                                       1e-12)
        return out

    rows = np.arange(len(token_ids))
    out = run(rows, steps)
    out["steps"] = np.full(len(rows), steps, dtype=np.int64)
    if tolerance is not None:
        pending, current = rows[out["completeness_error"] > tolerance], steps
        while pending.size and current < max_steps:
            current = min(2 * current, max_steps)
            retry = run(pending, current)
            for key, values in retry.items():
                out[key][pending] = values
            out["steps"][pending] = current
            pending = pending[retry["completeness_error"] > tolerance]
        out["converged"] = out["completeness_error"] <= tolerance
    return {k: v[0] for k, v in out.items()} if single else out


def gradient_x_input(scorer: PairScorer, token_ids, segment_ids,
                     target: str | None = None) -> np.ndarray:
    """Gradient x input per token (one row ``[L]``)."""
    return integrated_gradients(scorer, token_ids, segment_ids, steps=1,
                                target=target)["gradient_x_input"]


@functools.lru_cache(maxsize=8)
def _attention_fn(model):
    @tf.function(reduce_retracing=True)
    def attention(token_ids, segment_ids):
        _, scores = model.logit_from_token_embeddings(
            model.token_embeddings(token_ids), segment_ids, model.padding_mask(token_ids),
            return_attention_scores=True)
        return tf.stack([tf.cast(s, tf.float32) for s in scores])  # [layers, B, heads, L, L]

    return attention


def attention_rollout(scorer: PairScorer, token_ids: np.ndarray,
                      segment_ids: np.ndarray) -> np.ndarray:
    """Attention rollout relevance per token (one row ``[L]``; padding gets 0)."""
    token_ids = np.asarray(token_ids, dtype=np.int32)
    scores = _attention_fn(scorer.model)(tf.constant(token_ids[None]),
                                         tf.constant(np.asarray(segment_ids, np.int32)[None]))
    attention = scores.numpy()[:, 0].mean(axis=1)  # [layers, L, L], heads averaged
    length = attention.shape[-1]
    rollout = np.eye(length)
    for layer in attention:
        mixed = 0.5 * layer + 0.5 * np.eye(length)
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed @ rollout
    real = token_ids != scorer.pad_id
    if getattr(scorer.model, "pooling", "cls") == "mean":
        relevance = rollout[real].mean(axis=0)
    else:
        relevance = rollout[0]
    return np.where(real, relevance, 0.0)


def occlusion(scorer: PairScorer, token_ids: np.ndarray, segment_ids: np.ndarray,
              words: list[Word], score: float | None = None) -> np.ndarray:
    """Per *word*: f(x) - f(x with that word erased). Returns ``[len(words)]``."""
    if not words:
        return np.zeros([0])
    if score is None:
        score = float(scorer.scores(token_ids[None], segment_ids[None])[0])
    ids, segments = scorer.erase(token_ids, segment_ids, words, np.eye(len(words), dtype=bool))
    return score - scorer.scores(ids, segments)


def random_attributions(num_words: int, seed: int) -> np.ndarray:
    """Uniform random word scores: the floor every method must beat."""
    return np.random.default_rng(seed).uniform(size=num_words)


def to_words(token_scores: np.ndarray, words: list[Word]) -> np.ndarray:
    """Sums per-token scores over each word's pieces."""
    token_scores = np.asarray(token_scores, dtype=np.float64)
    return np.array([token_scores[list(w.positions)].sum() for w in words])
