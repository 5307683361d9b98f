"""TwoTowerScorer: the explanation methods read a two-tower model through packed rows."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from bert_recommender.explainability import token_attributions
from bert_recommender.explainability.explainer import ExplainOptions, Explainer
from bert_recommender.explainability.history_attributions import Case, leave_one_out
from bert_recommender.explainability.two_tower_scorer import HISTORY_SEPARATOR_TEXT, TwoTowerScorer
from bert_recommender.models.layers.item_text_tokenizer import ItemTextTokenizer
from bert_recommender.models.layers.pre_ln_bert_backbone import PreLNBertBackbone
from bert_recommender.models.two_tower import TwoTowerRecommender
from tests.harness import VOCABULARY
from trainer.data import input_pipeline
from trainer.kinds.two_tower import TwoTowerFeatures

HISTORY = 3
ITEM_TOKENS = 6  # 4 word pieces per text: truncation is exercised
ITEMS = {"a": "acme wireless laptops new", "b": "globex vintage camera",
         "c": "initech gaming phone", "d": "leather camera classic edition retro",
         "e": "compact pro laptop", "f": "waterproof phone"}


def build(seed=0, item_ids=True, user_layers=1):
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=list(VOCABULARY), lowercase=True)
    ids = sorted(ITEMS)
    features = TwoTowerFeatures(
        ItemTextTokenizer(tokenizer, ITEM_TOKENS), [""] + ids, [""] + [ITEMS[i] for i in ids],
        np.array([False] + [i != "f" for i in ids]), HISTORY)  # "f" is a cold item
    keras.utils.set_random_seed(seed)
    encoder = PreLNBertBackbone(vocabulary_size=len(VOCABULARY), num_layers=1, num_heads=2,
                                hidden_dim=16, intermediate_dim=32, dropout=0.0,
                                max_sequence_length=ITEM_TOKENS)
    model = TwoTowerRecommender(encoder, num_items=len(ids) if item_ids else 0,
                                max_history=HISTORY, dropout=0.0, user_layers=user_layers)
    # Give ids and biases some weight so that a lost id would show.
    x = features.from_text(tf.constant([""]), tf.constant([[""] * HISTORY]),
                           tf.constant(["a"]))
    model(x)
    if item_ids:
        rng = np.random.default_rng(seed)
        for layer in (model.item_id_embedding, model.item_bias):
            w = layer.embeddings.numpy()
            layer.embeddings.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    return model, features


def case(query="looking for a laptop", history=("a", "b", "c"), candidate="d",
         others=("e", "f")):
    return Case(query=query, history=[(h, ITEMS[h]) for h in history], candidate_id=candidate,
                candidate_text=ITEMS[candidate], candidate_title=ITEMS[candidate],
                others=[(o, ITEMS[o]) for o in others])


def model_logit(model, features, query, history_ids, candidate_id):
    """What the model itself scores for these items (newest history first)."""
    recent = list(history_ids)[::-1][:HISTORY]
    recent += [""] * (HISTORY - len(recent))
    x = features.from_text(tf.constant([query]),
                           tf.constant([[ITEMS.get(h, "") for h in recent]]),
                           tf.constant([ITEMS[candidate_id]]),
                           history_ids=tf.constant([recent]),
                           item_ids=tf.constant([candidate_id]))
    return float(model(x)[0])


def test_separator_matches_the_training_pipeline():
    assert HISTORY_SEPARATOR_TEXT == input_pipeline.USER_SIDE_SEPARATOR


@pytest.mark.parametrize("item_ids,user_layers", [(True, 1), (False, 0)])
def test_packed_rows_score_what_the_model_scores(item_ids, user_layers):
    model, features = build(item_ids=item_ids, user_layers=user_layers)
    scorer = TwoTowerScorer(model, features)
    c = case()
    scorer.bind(c)
    ids, segments = scorer.pack([c.user_text(scorer.compose)], [c.candidate_text])
    assert ids.shape == (1, scorer.sequence_length)
    want = model_logit(model, features, c.query, ["a", "b", "c"], "d")
    np.testing.assert_allclose(scorer.logits(ids, segments)[0], want, atol=1e-5)
    # History subsets (leave-one-out rebuilds the user side): ids follow their texts.
    keep = np.array([True, False, True])
    ids, segments = scorer.pack([c.user_text(scorer.compose, keep)], [c.candidate_text])
    np.testing.assert_allclose(scorer.logits(ids, segments)[0],
                               model_logit(model, features, c.query, ["a", "c"], "d"),
                               atol=1e-5)
    # No query, a cold candidate ("f": no id feature).
    c = case(query="", candidate="f", others=())
    scorer.bind(c)
    ids, segments = scorer.pack([c.user_text(scorer.compose)], [c.candidate_text])
    np.testing.assert_allclose(scorer.logits(ids, segments)[0],
                               model_logit(model, features, "", ["a", "b", "c"], "f"),
                               atol=1e-5)


def test_words_slots_and_erasure():
    model, features = build()
    scorer = TwoTowerScorer(model, features)
    c = case(query="")
    scorer.bind(c)
    ids, segments = scorer.pack([c.user_text(scorer.compose)], [c.candidate_text])
    words = scorer.words(ids[0], segments[0], has_query=False)
    # Newest history item first as part 0; each text cut to ITEM_TOKENS - 2 = 4 pieces.
    assert [(w.text, w.part) for w in words if w.segment == "user"][:4] == [
        ("initech", 0), ("gaming", 0), ("phone", 0), ("globex", 1)]
    assert [w.text for w in words if w.segment == "item"] == ["leather", "camera",
                                                              "classic", "edition"]
    # Erasing every word of the candidate = the model scoring an empty candidate text
    # (its id still counts: ids are not words).
    erased = np.array([[w.segment == "item" for w in words]])
    e_ids, e_segments = scorer.erase(ids[0], segments[0], words, erased)
    x = features.from_text(tf.constant([""]), tf.constant([[ITEMS["c"], ITEMS["b"],
                                                            ITEMS["a"]]]),
                           tf.constant([""]), history_ids=tf.constant([["c", "b", "a"]]),
                           item_ids=tf.constant(["d"]))
    np.testing.assert_allclose(scorer.logits(e_ids, e_segments)[0], float(model(x)[0]),
                               atol=1e-5)


def test_integrated_gradients_are_complete_and_reach_the_history():
    model, features = build(item_ids=False)
    scorer = TwoTowerScorer(model, features)
    c = case()
    scorer.bind(c)
    ids, segments = scorer.pack([c.user_text(scorer.compose)], [c.candidate_text])
    ig = token_attributions.integrated_gradients(scorer, ids[0], segments[0], steps=64)
    assert ig["completeness_error"] < 0.02, ig["completeness_error"]
    words = scorer.words(ids[0], segments[0], has_query=True)
    per_word = token_attributions.to_words(ig["attributions"], words)
    history = [v for v, w in zip(per_word, words) if w.segment == "user" and w.part >= 0]
    assert np.abs(history).max() > 0  # gradients flow through the user tower
    assert np.all(ig["attributions"][:scorer.prefix_length] == 0)  # ids are not words


def test_explainer_runs_every_method_and_says_what_does_not_apply():
    model, features = build()
    scorer = TwoTowerScorer(model, features)
    methods = ("integrated_gradients", "gradient_x_input", "attention_rollout", "occlusion",
               "lime", "leave_one_out", "shapley")
    explainer = Explainer(scorer, scorer.compose, ExplainOptions(methods=methods, ig_steps=8,
                                                                 lime_samples=32))
    record, token_rows, history_rows = explainer.explain(case())
    assert "attention_rollout" in record["not_applicable"]
    assert "attention_rollout" not in record["token_attributions"]
    assert set(record["token_attributions"]) == {"integrated_gradients", "gradient_x_input",
                                                 "occlusion", "lime"}
    assert set(history_rows) == {"leave_one_out", "shapley", "random"}
    # Leave-one-out is measured on the model: f(all) - f(without the item), ids included.
    values = leave_one_out(scorer, case(), scorer.compose)
    full = model_logit(model, features, "looking for a laptop", ["a", "b", "c"], "d")
    without_b = model_logit(model, features, "looking for a laptop", ["a", "c"], "d")
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    np.testing.assert_allclose(values[1], sigmoid(full) - sigmoid(without_b), atol=1e-5)
    assert record["sentence"]


def test_id_only_models_are_refused():
    model, features = build()
    id_only = TwoTowerFeatures(None, features.item_ids, features.item_texts,
                                              features.trained_mask, HISTORY)
    with pytest.raises(ValueError, match="no words to explain"):
        TwoTowerScorer(TwoTowerRecommender(None, num_items=6, max_history=HISTORY,
                                           embedding_dim=8), id_only)
