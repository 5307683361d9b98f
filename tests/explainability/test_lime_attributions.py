"""LIME word attributions: hand-computed fits, an additive model's weights recovered, seeds,
bad arguments, and agreement with the ``lime`` package (skipped when it is not installed)."""

import numpy as np
import pytest

from bert_recommender.explainability import lime_attributions as la
from bert_recommender.explainability.pair_scorer import PairScorer
from tests.harness import ITEM_TEXT, USER_TEXT, VOCABULARY, make_packer


class TokenWeightScorer(PairScorer):
    """A stand-in model: the score is a fixed function of which token ids are present."""

    def __init__(self, packer, score_of_ids):
        super().__init__(model=None, packer=packer)
        self.score_of_ids = score_of_ids
        self.calls = []

    def probabilities(self, token_ids, segment_ids):
        self.calls.append(len(np.atleast_2d(token_ids)))
        return np.array([self.score_of_ids(row) for row in np.atleast_2d(token_ids)],
                        dtype=np.float64)


@pytest.fixture(scope="module")
def packer():
    return make_packer()


def packed_row(scorer):
    ids, segments = scorer.pack([USER_TEXT], [ITEM_TEXT])
    return ids[0], segments[0], scorer.words(ids[0], segments[0], has_query=True)


def additive_scorer(packer, seed=0):
    """Score = 0.5 + the weights of the word pieces present; returns (scorer, weights)."""
    weights = np.random.default_rng(seed).normal(size=len(VOCABULARY)) * 0.05
    weights[[packer.tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", ";")]] = 0
    return TokenWeightScorer(packer, lambda row: 0.5 + weights[row].sum()), weights


# -- the pieces, against hand computations ------------------------------------------------


def test_samples_keep_the_input_first_and_remove_at_least_one_word():
    masks = la.sample_masks(5, 400, np.random.default_rng(0))
    assert masks.shape == (400, 5) and masks.dtype == bool
    assert masks[0].all()
    removed = (~masks[1:]).sum(axis=1)
    assert removed.min() == 1 and removed.max() == 5  # 1 .. d, the empty text included
    # Removed-set size is uniform on 1..5: each size about 80 of 399 draws.
    assert np.all(np.abs(np.bincount(removed, minlength=6)[1:] - 399 / 5) < 30)


def test_distances_and_kernel_match_lime_formulas():
    masks = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=bool)
    # 100 * (1 - sqrt(kept / 4)): 0, 50, 100 (1 - sqrt(3)/2), 100 (empty text).
    np.testing.assert_allclose(la.distances(masks),
                               [0.0, 50.0, 100 * (1 - np.sqrt(0.75)), 100.0])
    np.testing.assert_allclose(la.kernel(np.array([0.0, 25.0, 50.0])),
                               [1.0, np.exp(-0.5), np.exp(-2.0)])


def test_one_word_fit_is_the_shrunk_difference():
    # One feature: every perturbation removes it (size uniform on 1..1). With n1 samples
    # at x=1 (weight 1) and n0 at x=0 (distance 100, weight sqrt(exp(-16)) = exp(-8)),
    # the weighted variance is S = n1 n0 w0 / (n1 + n0 w0) and ridge gives
    # c = (f(on) - f(off)) S / (S + alpha); the intercept puts the fit through the
    # weighted means.
    fit = la.fit_lime(lambda kept: np.where(kept[:, 0], 0.9, 0.3), 1, num_samples=10)
    n1, n0, w0 = 1, 9, np.exp(-8.0)
    s = n1 * n0 * w0 / (n1 + n0 * w0)
    assert fit.coefficients[0] == pytest.approx(0.6 * s / (s + 1.0), rel=1e-9)
    x_mean = n1 / (n1 + n0 * w0)
    assert fit.intercept == pytest.approx(0.3 + 0.6 * x_mean - fit.coefficients[0] * x_mean,
                                          rel=1e-9)
    assert fit.evaluations == 2
    unpenalised = la.fit_lime(lambda kept: np.where(kept[:, 0], 0.9, 0.3), 1, num_samples=10,
                              alpha=0.0)
    assert unpenalised.coefficients[0] == pytest.approx(0.6)
    assert unpenalised.intercept == pytest.approx(0.3) and unpenalised.r2 == pytest.approx(1.0)


def test_weighted_ridge_solves_the_normal_equations():
    rng = np.random.default_rng(1)
    x = (rng.uniform(size=(50, 4)) > 0.5).astype(float)
    y, w = rng.normal(size=50), rng.uniform(0.1, 1.0, size=50)
    coefficients, intercept = la.weighted_ridge(x, y, w, alpha=1.0)
    xc = x - w @ x / w.sum()
    yc = y - w @ y / w.sum()
    expected = np.linalg.solve(xc.T @ (w[:, None] * xc) + np.eye(4), xc.T @ (w * yc))
    np.testing.assert_allclose(coefficients, expected, atol=1e-12)
    assert intercept == pytest.approx(w @ (y - x @ expected) / w.sum())
    sklearn = pytest.importorskip("sklearn.linear_model")
    model = sklearn.Ridge(alpha=1.0).fit(x, y, sample_weight=w)
    np.testing.assert_allclose(coefficients, model.coef_, atol=1e-10)
    assert intercept == pytest.approx(model.intercept_, abs=1e-10)


# -- words of a packed pair -------------------------------------------------------------


def test_additive_model_gets_each_words_own_weight(packer):
    # For a score that is a sum over the pieces present, the unpenalised fit is exact: each
    # coefficient is the weight of its own word's pieces, the intercept the score of the
    # empty pair. Checks that value i belongs to words[i], including a two-piece word
    # ("laptops") and words that occur twice ("wireless", "laptop").
    scorer, weights = additive_scorer(packer)
    ids, segments, words = packed_row(scorer)
    expected = np.array([weights[ids[list(w.positions)]].sum() for w in words])
    values, evaluations = la.lime_word_attributions(scorer, ids, segments, words, alpha=0.0)
    np.testing.assert_allclose(values, expected, atol=1e-12)
    assert evaluations == sum(scorer.calls) and 200 < evaluations <= 256  # duplicates once

    # With lime's alpha=1 the fit shrinks towards 0 (as a vector: ridge's norm falls as
    # alpha grows; single coefficients may move either way) by a few percent, no more.
    ridge, _ = la.lime_word_attributions(scorer, ids, segments, words)
    np.testing.assert_allclose(ridge, expected, atol=0.1 * np.abs(expected).max())
    assert 0.9 * np.linalg.norm(expected) < np.linalg.norm(ridge) < np.linalg.norm(expected)
    assert int(np.argmax(np.abs(ridge))) == int(np.argmax(np.abs(expected)))


def test_planted_word_stands_out(packer):
    acme = packer.tokenizer.token_to_id("acme")
    scorer = TokenWeightScorer(packer, lambda row: 0.9 if acme in row else 0.1)
    ids, segments, words = packed_row(scorer)
    values, _ = la.lime_word_attributions(scorer, ids, segments, words)
    planted = [w.text for w in words].index("acme")
    assert int(np.argmax(values)) == planted and values[planted] > 0.7
    assert np.abs(np.delete(values, planted)).max() < 0.02


def test_deterministic_for_a_seed_and_leaves_numpy_state_alone(tiny_scorer):
    ids, segments, words = packed_row(tiny_scorer)
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    first = la.lime_word_attributions(tiny_scorer, ids, segments, words, num_samples=64,
                                      seed=7)
    second = la.lime_word_attributions(tiny_scorer, ids, segments, words, num_samples=64,
                                       seed=7)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
    assert np.random.rand() == expected_draw
    other = la.lime_word_attributions(tiny_scorer, ids, segments, words, num_samples=64,
                                      seed=8)
    assert not np.array_equal(first[0], other[0])


def test_edge_cases(packer):
    scorer, _ = additive_scorer(packer)
    ids, segments, words = packed_row(scorer)
    values, evaluations = la.lime_word_attributions(scorer, ids, segments, [])
    assert values.shape == (0,) and evaluations == 0 and scorer.calls == []
    # Two samples: the input and one perturbation; still one value per word.
    values, evaluations = la.lime_word_attributions(scorer, ids, segments, words,
                                                    num_samples=2)
    assert values.shape == (len(words),) and evaluations == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"num_samples": 1}, "num_samples must be an integer >= 2"),
    ({"num_samples": 10.0}, "num_samples must be an integer >= 2"),
    ({"kernel_width": 0.0}, "kernel_width must be a positive number"),
    ({"kernel_width": float("nan")}, "kernel_width must be a positive number"),
    ({"alpha": -1.0}, "alpha must be >= 0"),
])
def test_bad_arguments_are_refused(packer, kwargs, message):
    scorer, _ = additive_scorer(packer)
    ids, segments, words = packed_row(scorer)
    with pytest.raises(ValueError, match=message):
        la.lime_word_attributions(scorer, ids, segments, words, **kwargs)
    with pytest.raises(ValueError, match=message):
        la.lime_word_attributions(scorer, ids, segments, [], **kwargs)  # even with no words
    assert scorer.calls == []


def test_fit_lime_refuses_no_features_and_wrong_score_counts():
    with pytest.raises(ValueError, match="num_features must be at least 1"):
        la.fit_lime(lambda kept: np.zeros(len(kept)), 0)
    with pytest.raises(ValueError, match="returned 1 scores"):
        la.fit_lime(lambda kept: np.zeros(1), 3)


# -- against the reference implementation --------------------------------------------------


def test_matches_lime_base_on_the_same_neighbourhood(tiny_scorer):
    """Our fit vs lime's, on our samples of the tiny model (a non-additive scorer)."""
    lime_base = pytest.importorskip("lime.lime_base")
    lime_text = pytest.importorskip("lime.lime_text")
    from sklearn.metrics.pairwise import pairwise_distances

    ids, segments, words = packed_row(tiny_scorer)

    def click_probability(kept):
        return tiny_scorer.probabilities(*tiny_scorer.erase(ids, segments, words, ~kept))

    fit = la.fit_lime(click_probability, len(words), num_samples=256, seed=3)
    assert np.ptp(fit.scores) > 1e-3  # the comparison must not be vacuous
    data = fit.masks.astype(float)
    # lime's own distance (sklearn cosine on the binary data, x 100) and kernel.
    distances = pairwise_distances(data, data[:1], metric="cosine").ravel() * 100
    np.testing.assert_allclose(la.distances(fit.masks), distances, atol=1e-10)
    base = lime_text.LimeTextExplainer(kernel_width=25, random_state=0).base
    assert isinstance(base, lime_base.LimeBase)
    labels = np.stack([1 - fit.scores, fit.scores], axis=1)
    intercept, pairs, score, local = base.explain_instance_with_data(
        data, labels, distances, label=1, num_features=len(words), feature_selection="none")
    theirs = np.zeros(len(words))
    for index, value in pairs:
        theirs[index] = value
    np.testing.assert_allclose(fit.coefficients, theirs, rtol=1e-7, atol=1e-10)
    assert fit.intercept == pytest.approx(intercept, abs=1e-10)
    assert fit.r2 == pytest.approx(score, abs=1e-9)
    assert fit.local_prediction == pytest.approx(float(np.ravel(local)[0]), abs=1e-10)


def test_matches_lime_text_explainer_end_to_end(packer):
    """lime's own sampler on the words as a string (bow=False: each occurrence its own
    feature) and ours converge to the same coefficients on an additive scorer."""
    lime_text = pytest.importorskip("lime.lime_text")
    scorer, weights = additive_scorer(packer)
    ids, segments, words = packed_row(scorer)
    word_weight = {}
    for w in words:  # the same text always has the same pieces, so one weight per text
        word_weight[w.text] = weights[ids[list(w.positions)]].sum()

    def classifier(texts):
        # bow=False replaces a removed word by the string "UNKWORDZ", which weighs nothing.
        p = np.array([0.5 + sum(word_weight.get(t, 0.0) for t in s.split()) for s in texts])
        return np.stack([1 - p, p], axis=1)

    explainer = lime_text.LimeTextExplainer(kernel_width=25, bow=False, random_state=0)
    text = " ".join(w.text for w in words)
    theirs_fit = explainer.explain_instance(text, classifier, labels=(1,),
                                            num_features=len(words), num_samples=4000)
    theirs = np.zeros(len(words))
    for index, value in theirs_fit.as_map()[1]:
        theirs[index] = value
    ours, _ = la.lime_word_attributions(scorer, ids, segments, words, num_samples=4000)
    expected = np.array([word_weight[w.text] for w in words])
    # Same shrinkage, up to sampling noise of the two neighbourhoods.
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    assert np.abs(ours - expected).max() < 0.1 * np.abs(expected).max()
