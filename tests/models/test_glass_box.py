"""models/glass_box.py and its featurizer: word features by hand, and contributions that
add up to the logit exactly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_recommender.models.glass_box import ITEM_FEATURES, WORD_FEATURES, GlassBoxRecommender
from trainer.kinds.glass_box import GlassBoxFeatures

WORDS = ["acme", "blue", "camera", "laptop", "red", "wireless"]
ITEMS = ["", "i1", "i2", "i3", "i4"]
TEXTS = ["", "Acme wireless laptop, wireless!", "red camera", "blue laptop", "acme red"]


def _features():
    return GlassBoxFeatures(WORDS, ITEMS, TEXTS, max_history=3)


def _id(word):
    return WORDS.index(word) + 1


def test_item_words_are_distinct_lowercase_words():
    features = _features()
    assert features.item_words[1].tolist()[:3] == [_id("acme"), _id("wireless"), _id("laptop")]
    assert features.item_words[1, 3:].tolist() == [0] * (features.item_words.shape[1] - 3)
    assert features.item_words[0].tolist() == [0] * features.item_words.shape[1]
    assert features.word_ids(["A RED thing"]) == [[0, _id("red"), 0]]


def _batch(features):
    # Candidate i1 (acme wireless laptop); history: i3 (blue laptop), i4 (acme red), i2;
    # query names the laptop. Second row: candidate i2, empty history, no query.
    return features.features({
        "item_index": tf.constant([1, 2]),
        "history_index": tf.constant([[3, 4, 2], [0, 0, 0]]),
        "query": tf.constant(["I want a LAPTOP", ""])})


def test_word_features_by_hand():
    features = _features()
    model = GlassBoxRecommender(len(WORDS) + 1, len(ITEMS) - 1)
    x = _batch(features)
    values, present = model.word_features(x)
    values, present = np.asarray(values), np.asarray(present)
    column = {name: i for i, name in enumerate(WORD_FEATURES)}
    # acme: in 1 of 3 history items; wireless: none; laptop: in 1, and in the query.
    acme, wireless, laptop = values[0, 0], values[0, 1], values[0, 2]
    assert present[0, :3].tolist() == [1, 1, 1] and present[0, 3:].sum() == 0
    assert acme[column["in_history>=1"]] == 1 and acme[column["in_history>=2"]] == 0
    assert acme[column["history_share"]] == pytest.approx(1 / 3)
    assert wireless[column["in_history>=1"]] == 0 and wireless[column["has_word"]] == 1
    assert laptop[column["in_query"]] == 1 and acme[column["in_query"]] == 0
    assert np.all(values[0, 3:] == 0)  # padding reads nothing
    assert values[1, :, column["in_history>=1"]].sum() == 0  # no history
    items = np.asarray(model.item_features(x))
    assert items[:, ITEM_FEATURES.index("has_query")].tolist() == [1, 0]
    assert items[:, ITEM_FEATURES.index("history_length")].tolist() == [1, 0]


def test_contributions_add_up_to_the_logit_and_popularity_is_counted():
    features = _features()
    model = GlassBoxRecommender(len(WORDS) + 1, len(ITEMS) - 1)
    x = _batch(features)
    model(x)
    rng = np.random.default_rng(0)
    for weight in model.trainable_weights:
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    model.set_item_counts(np.array([1, 1, 1, 2]))
    np.testing.assert_allclose(np.asarray(model.log_popularity)[:3],
                               [0, 1, np.log(2) / np.log(4)], rtol=1e-6)
    parts = model.contributions(x)
    total = (np.asarray(parts["bias"]) + np.asarray(parts["word_contributions"]).sum(-1)
             + np.asarray(parts["item_contributions"]).sum(-1))
    np.testing.assert_allclose(total, np.asarray(model(x)), rtol=1e-5)
    assert np.all(np.asarray(parts["word_contributions"])[0, 3:] == 0)
    again = keras.models.model_from_json(model.to_json())
    assert again.vocabulary_size == model.vocabulary_size and again.l2 == model.l2


def test_from_ids_matches_the_table_path_and_reads_unknown_ids_as_no_item():
    features = _features()
    by_ids = features.from_ids(tf.constant(["I want a LAPTOP", ""]),
                               tf.constant([["i3", "i4", "i2", "i1"], ["nope", "", "", ""]]),
                               tf.constant(["i1", "i2"]))
    by_rows = _batch(features)
    for key in by_rows:
        np.testing.assert_array_equal(np.asarray(by_ids[key]), np.asarray(by_rows[key]))
