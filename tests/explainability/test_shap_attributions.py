"""SHAP word attributions (Partition explainer + Text masker over PairScorer words)."""

import sys

import keras
import keras_hub
import numpy as np
import pytest

pytest.importorskip("shap")

from bert_recommender.explainability.pair_scorer import PairScorer  # noqa: E402
from bert_recommender.explainability.shap_attributions import shap_word_attributions  # noqa: E402
from bert_recommender.models.bert_recommender import BERTRecommender  # noqa: E402
from bert_recommender.models.layers.text_pair_packer import TextPairPacker  # noqa: E402
from trainer.data import input_pipeline  # noqa: E402

VOCABULARY = (input_pipeline.RESERVED_TOKENS + [";"]
              + "looking for a laptop acme wireless globex pro phone".split() + ["##s"])
USER_TEXT = "looking for a laptop ; acme wireless laptops"  # "laptops" = laptop ##s
ITEM_TEXT = "globex wireless laptop pro"


@pytest.fixture(scope="module")
def packer():
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=VOCABULARY, lowercase=True)
    return TextPairPacker(tokenizer, sequence_length=24, item_max_tokens=8)


@pytest.fixture(scope="module")
def scorer(packer):
    keras.utils.set_random_seed(0)
    # Pre-LN with first-token pooling: at random init its score moves by a few percent when
    # words are erased (the post-LN/[CLS]-pooler model barely moves, which would make the
    # additivity check vacuous).
    model = BERTRecommender.from_sizes(vocabulary_size=len(VOCABULARY), num_layers=1,
                                       num_heads=2, hidden_dim=16, intermediate_dim=32,
                                       dropout=0.0, head_dropout=0.0, pooling="first",
                                       normalize_first=True)
    return PairScorer(model, packer)


def packed_row(scorer):
    ids, segments = scorer.pack([USER_TEXT], [ITEM_TEXT])
    return ids[0], segments[0], scorer.words(ids[0], segments[0], has_query=True)


class TokenWeightScorer(PairScorer):
    """A stand-in model: the score is a fixed function of which token ids are present."""

    def __init__(self, packer, score_of_ids):
        super().__init__(model=None, packer=packer)
        self.score_of_ids = score_of_ids

    def probabilities(self, token_ids, segment_ids):
        return np.array([self.score_of_ids(row) for row in np.atleast_2d(token_ids)],
                        dtype=np.float64)


def test_values_align_with_words_and_add_up(scorer):
    ids, segments, words = packed_row(scorer)
    assert [w.text for w in words] == ("looking for a laptop acme wireless laptops "
                                       "globex wireless laptop pro").split()
    values, evaluations = shap_word_attributions(scorer, ids, segments, words, max_evals=256)
    assert values.shape == (len(words),) and values.dtype == np.float64
    assert 0 < evaluations <= 256

    full = scorer.probabilities(ids, segments)[0]
    empty = scorer.probabilities(*scorer.erase(ids, segments, words,
                                               np.ones(len(words), bool)))[0]
    assert abs(full - empty) > 1e-3  # else additivity would hold trivially
    assert values.sum() == pytest.approx(full - empty, abs=1e-4)


def test_additive_under_a_small_budget(scorer):
    ids, segments, words = packed_row(scorer)
    values, evaluations = shap_word_attributions(scorer, ids, segments, words, max_evals=12)
    assert evaluations <= 12
    full = scorer.probabilities(ids, segments)[0]
    empty = scorer.probabilities(*scorer.erase(ids, segments, words,
                                               np.ones(len(words), bool)))[0]
    assert values.sum() == pytest.approx(full - empty, abs=1e-4)


def test_deterministic_for_a_seed_and_leaves_numpy_state_alone(scorer):
    ids, segments, words = packed_row(scorer)
    np.random.seed(123)
    expected_draw = np.random.rand()
    np.random.seed(123)
    first = shap_word_attributions(scorer, ids, segments, words, max_evals=40, seed=7)
    second = shap_word_attributions(scorer, ids, segments, words, max_evals=40, seed=7)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
    assert np.random.rand() == expected_draw


def test_planted_word_gets_all_the_credit(packer):
    acme = packer.tokenizer.token_to_id("acme")
    scorer = TokenWeightScorer(packer, lambda row: 0.9 if acme in row else 0.1)
    ids, segments, words = packed_row(scorer)
    values, _ = shap_word_attributions(scorer, ids, segments, words)
    planted = [w.text for w in words].index("acme")
    assert values[planted] == pytest.approx(0.8)
    np.testing.assert_allclose(np.delete(values, planted), 0.0, atol=1e-12)


def test_additive_model_gets_each_words_own_weight(packer):
    # For a score that is a sum over the pieces present, every word's Owen value is exactly
    # the weight of its own pieces: checks that value i belongs to words[i], including a
    # two-piece word and words that occur twice.
    weights = np.random.default_rng(0).normal(size=len(VOCABULARY)) * 0.05
    weights[[packer.tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", ";")]] = 0
    scorer = TokenWeightScorer(packer, lambda row: 0.5 + weights[row].sum())
    ids, segments, words = packed_row(scorer)
    values, _ = shap_word_attributions(scorer, ids, segments, words)
    expected = [weights[ids[list(w.positions)]].sum() for w in words]
    np.testing.assert_allclose(values, expected, atol=1e-12)


def test_edge_cases(packer):
    scorer = TokenWeightScorer(packer, lambda row: float(len(np.nonzero(row)[0])))
    ids, segments = scorer.pack(["laptop"], ["pro"])
    words = scorer.words(ids[0], segments[0], has_query=True)
    values, evaluations = shap_word_attributions(scorer, ids[0], segments[0], words[:1])
    assert values.tolist() == [1.0] and evaluations == 2  # one word: f(all) - f(none)
    values, evaluations = shap_word_attributions(scorer, ids[0], segments[0], [])
    assert values.shape == (0,) and evaluations == 0
    with pytest.raises(ValueError, match="max_evals"):
        shap_word_attributions(scorer, ids[0], segments[0], words, max_evals=1)


def test_missing_shap_says_how_to_install(monkeypatch, packer):
    monkeypatch.setitem(sys.modules, "shap", None)  # makes `import shap` raise ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[explain\]"'):
        shap_word_attributions(PairScorer(None, packer), np.zeros(4), np.zeros(4), [])
