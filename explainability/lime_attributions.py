"""LIME word attributions (Ribeiro et al., 2016), written out over the pair's words.

LIME explains one prediction with a linear model fitted around it. For text, as in the
reference implementation's ``LimeTextExplainer`` (``lime`` 0.2.0.1):

1. **Sample** binary masks ``z`` over the words (1 = kept). The first sample keeps every
   word; each other sample draws how many words to remove uniformly from ``1 .. d`` (``d``
   words, so the empty text can occur) and then which ones, uniformly without replacement.
2. **Score** each variant with the words of ``z == 0`` *erased*, exactly as every other
   erasure-based explainer here does (:meth:`PairScorer.erase`: the word's pieces are removed
   and the gap closed; ``[CLS]``, ``[SEP]`` and the ``;`` separators stay). A variant that
   occurs more than once is scored once.
3. **Weight** sample ``z`` by the exponential kernel on its distance to the input,
   ``sqrt(exp(-D(z)^2 / kernel_width^2))`` with ``D`` the cosine distance between ``z`` and
   the all-ones vector times 100: ``D = 100 * (1 - sqrt(|z| / d))`` (100 for the empty text,
   as scikit-learn's cosine distance gives for a zero vector). ``kernel_width`` defaults to
   25 as in ``LimeTextExplainer``. (The square root is lime's: it is the kernel's own
   definition there, not a typo.)
4. **Fit** a weighted ridge regression of the scores on ``z`` with an unpenalised intercept
   (``alpha=1``: lime's default ``Ridge(alpha=1)``) and return its coefficients, one per
   word: how much the click probability rises when the word is present, in the linear model
   that best fits the neighbourhood. Same sign convention as occlusion (positive = supports
   the recommendation).

Lime's ``feature_selection`` step (keep only ``num_features`` words) is not done: every word
gets a coefficient, as in lime with ``feature_selection="none"``. Each *occurrence* of a word
is its own feature (lime's ``bow=False``), because attributions here are one value per entry
of :meth:`PairScorer.words`; lime's default ``bow=True`` would tie all occurrences together.

Why hand-written rather than the ``lime`` package: lime 0.2.0.1 (July 2020) is its last
release and is unmaintained; it installs (pip check clean with this project's numpy 2.4 /
scikit-learn 1.9 / scipy / matplotlib, checked in a scratch venv) but pulls scikit-image and
its dependencies (imageio, tifffile, networkx, lazy-loader) that nothing else here needs, it
works on raw strings (re-splitting with its own regex, which would not line up with WordPiece
words) and uses NumPy's legacy global-style ``RandomState``. The algorithm is the four steps
above, about sixty lines of NumPy with no scikit-learn dependency, so the core package keeps
working without the ``[explain]`` extra. ``tests/explainability/test_lime_attributions.py``
checks it against ``lime.lime_base.LimeBase.explain_instance_with_data`` and
``LimeTextExplainer`` when ``lime`` is importable.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from bert_recommender.explainability.pair_scorer import PairScorer, Word

DEFAULT_KERNEL_WIDTH = 25.0  # lime.lime_text.LimeTextExplainer(kernel_width=25)
DEFAULT_ALPHA = 1.0  # lime.lime_base.LimeBase: Ridge(alpha=1, fit_intercept=True)
DISTANCE_SCALE = 100.0  # LimeTextExplainer: cosine distance * 100


@dataclasses.dataclass(frozen=True)
class LimeFit:
    """The local linear model LIME fitted, and what it was fitted on.

    Attributes:
      coefficients: float64 ``[d]``, one per feature (word): the attributions.
      intercept: the fitted score with every feature absent.
      r2: weighted R^2 of the fit on the samples (lime's ``score``).
      local_prediction: the linear model's value at the input (all features present).
      masks: bool ``[num_samples, d]``, the samples (row 0 keeps everything).
      scores: float64 ``[num_samples]``, the scorer's value of each sample.
      weights: float64 ``[num_samples]``, the kernel weights.
      evaluations: distinct masks sent to the scorer.
    """

    coefficients: np.ndarray
    intercept: float
    r2: float
    local_prediction: float
    masks: np.ndarray
    scores: np.ndarray
    weights: np.ndarray
    evaluations: int


def sample_masks(num_features: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """LIME text samples: bool ``[num_samples, num_features]``, ``True`` = feature kept.

    Row 0 keeps every feature; in each other row the number of removed features is uniform
    on ``1 .. num_features`` and the removed set is uniform among sets of that size.
    """
    masks = np.ones((num_samples, num_features), dtype=bool)
    sizes = rng.integers(1, num_features + 1, size=num_samples - 1)
    for row, size in enumerate(sizes, start=1):
        masks[row, rng.choice(num_features, size=size, replace=False)] = False
    return masks


def distances(masks: np.ndarray) -> np.ndarray:
    """Cosine distance of each binary mask to the all-ones mask, times 100 (lime's scale).

    ``1 - |z| / (sqrt(|z|) sqrt(d)) = 1 - sqrt(|z| / d)``; a mask with no feature kept is
    at distance 1, as scikit-learn's ``cosine_distances`` puts a zero vector.
    """
    masks = np.atleast_2d(masks)
    return DISTANCE_SCALE * (1.0 - np.sqrt(masks.sum(axis=1) / masks.shape[1]))


def kernel(distance: np.ndarray, kernel_width: float = DEFAULT_KERNEL_WIDTH) -> np.ndarray:
    """lime's exponential kernel: ``sqrt(exp(-distance^2 / kernel_width^2))``."""
    return np.sqrt(np.exp(-np.square(distance) / kernel_width ** 2))


def weighted_ridge(features: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                   alpha: float = DEFAULT_ALPHA) -> tuple[np.ndarray, float]:
    """``(coefficients, intercept)`` minimising
    ``sum_i w_i (y_i - b - x_i . c)^2 + alpha |c|^2`` (the intercept is not penalised).

    This is scikit-learn's ``Ridge(alpha).fit(X, y, sample_weight=w)``: centre ``X`` and
    ``y`` on their weighted means, then solve the penalised least squares; with ``alpha=0``
    and a rank-deficient design it returns the minimum-norm solution.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    if total <= 0:
        raise ValueError("the kernel weights sum to 0; increase kernel_width")
    x_mean, y_mean = w @ x / total, float(w @ y / total)
    root = np.sqrt(w)[:, None]
    # [sqrt(W) Xc; sqrt(alpha) I] c = [sqrt(W) yc; 0], solved by least squares: stable, and
    # well defined when alpha=0 leaves the normal equations singular.
    design = np.vstack([root * (x - x_mean), np.sqrt(alpha) * np.eye(x.shape[1])])
    target = np.concatenate([root[:, 0] * (y - y_mean), np.zeros(x.shape[1])])
    coefficients = np.linalg.lstsq(design, target, rcond=None)[0]
    return coefficients, y_mean - float(x_mean @ coefficients)


def _weighted_r2(targets, predictions, weights) -> float:
    # sklearn's r2_score with sample_weight (force_finite: a constant target scores 1.0 when
    # predicted exactly, else 0.0).
    mean = weights @ targets / weights.sum()
    residual = float(weights @ np.square(targets - predictions))
    total = float(weights @ np.square(targets - mean))
    if total == 0.0:
        return 1.0 if residual == 0.0 else 0.0
    return 1.0 - residual / total


def fit_lime(score_masks: Callable[[np.ndarray], np.ndarray], num_features: int,
         num_samples: int = 256, kernel_width: float = DEFAULT_KERNEL_WIDTH,
         alpha: float = DEFAULT_ALPHA, seed: int = 0) -> LimeFit:
    """LIME over ``num_features`` binary features with any scorer.

    Args:
      score_masks: maps a bool ``[n, num_features]`` matrix (``True`` = feature kept) to
        ``n`` scores. Called once, with the distinct masks only.
      num_features: how many features (words) the input has; at least 1.
      num_samples: masks in the neighbourhood, the all-kept input included; at least 2.
      kernel_width: width of the exponential kernel on the distance (0 .. 100); > 0.
      alpha: ridge penalty on the coefficients; >= 0 (0 = weighted least squares).
      seed: seeds the sampling (``np.random.default_rng``); no global state is touched.

    Returns:
      A :class:`LimeFit`; ``coefficients`` are the attributions.

    Example (a score that adds 0.3 for feature 0 and 0.1 for feature 2)::

        fit = fit_lime(lambda kept: 0.2 + kept @ np.array([0.3, 0.0, 0.1]), 3, alpha=0.0)
        fit.coefficients  # -> [0.3, 0.0, 0.1]
    """
    _check(num_samples, kernel_width, alpha)
    if num_features < 1:
        raise ValueError(f"num_features must be at least 1, got {num_features}")
    masks = sample_masks(num_features, num_samples, np.random.default_rng(seed))
    unique, inverse = np.unique(masks, axis=0, return_inverse=True)
    unique_scores = np.asarray(score_masks(unique), dtype=np.float64).reshape(-1)
    if unique_scores.shape != (len(unique),):
        raise ValueError(f"score_masks returned {unique_scores.shape[0]} scores for "
                         f"{len(unique)} masks")
    scores = unique_scores[inverse.reshape(-1)]
    weights = kernel(distances(masks), kernel_width)
    features = masks.astype(np.float64)
    coefficients, intercept = weighted_ridge(features, scores, weights, alpha)
    return LimeFit(coefficients=coefficients, intercept=intercept,
                   r2=_weighted_r2(scores, features @ coefficients + intercept, weights),
                   local_prediction=intercept + float(coefficients.sum()), masks=masks,
                   scores=scores, weights=weights, evaluations=len(unique))


def lime_word_attributions(scorer: PairScorer, token_ids: np.ndarray, segment_ids: np.ndarray,
                           words: list[Word], num_samples: int = 256,
                           kernel_width: float = DEFAULT_KERNEL_WIDTH,
                           alpha: float = DEFAULT_ALPHA,
                           seed: int = 0) -> tuple[np.ndarray, int]:
    """LIME coefficients (on the click probability) of each word in ``words`` (one row).

    A removed word is erased (:meth:`PairScorer.erase`), so the perturbation is the one
    occlusion, SHAP and the faithfulness metrics use.

    Args:
      scorer: the :class:`PairScorer` of the model to explain.
      token_ids, segment_ids: one packed row (``[sequence_length]``).
      words: ``scorer.words(token_ids, segment_ids, ...)`` for that row.
      num_samples, kernel_width, alpha, seed: see :func:`fit_lime`.

    Returns:
      ``(values, evaluations)``: float64 ``[len(words)]``, and the number of distinct
      variants the model scored (at most ``num_samples``).
    """
    _check(num_samples, kernel_width, alpha)
    if not words:
        return np.zeros([0], np.float64), 0
    token_ids, segment_ids = np.asarray(token_ids), np.asarray(segment_ids)

    def click_probability(kept: np.ndarray) -> np.ndarray:
        return scorer.scores(*scorer.erase(token_ids, segment_ids, words, ~kept))

    fit = fit_lime(click_probability, len(words), num_samples=num_samples,
               kernel_width=kernel_width, alpha=alpha, seed=seed)
    return fit.coefficients, fit.evaluations


def _check(num_samples, kernel_width, alpha) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2 (the input and at least one "
                         f"perturbation), got {num_samples!r}")
    if not np.isfinite(kernel_width) or kernel_width <= 0:
        raise ValueError(f"kernel_width must be a positive number, got {kernel_width!r}")
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
