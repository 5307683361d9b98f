"""Token attributions on tiny models: completeness, agreement with hand computations, and a
planted signal that every method must recover."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_recommender.explainability import token_attributions as ta
from bert_recommender.explainability.pair_scorer import PairScorer
from tests.harness import ITEM_TEXT, USER_TEXT, WORDS, make_model, make_packer


@pytest.fixture(scope="module")
def packed(tiny_scorer):
    ids, segments = tiny_scorer.pack([USER_TEXT], [ITEM_TEXT])
    return ids[0], segments[0]


def test_words_group_pieces_and_know_their_part(tiny_scorer, packed):
    words = tiny_scorer.words(*packed, has_query=True)
    assert [w.text for w in words] == (
        "looking for a laptop acme wireless laptops new globex vintage camera "
        "initech wireless laptop pro").split()
    laptops = words[6]
    assert len(laptops.positions) == 2  # laptop ##s
    assert [w.part for w in words[:4]] == [-1] * 4  # the query
    assert {w.part for w in words[4:8]} == {0} and {w.part for w in words[8:11]} == {1}
    assert {w.segment for w in words[11:]} == {"item"}
    # Without a query the first title is part 0.
    ids, segments = tiny_scorer.pack(["acme wireless ; globex camera"], ["pro"])
    assert [w.part for w in tiny_scorer.words(ids[0], segments[0], False)] == [0, 0, 1, 1, 0]


def test_erase_deletes_words_and_keeps_structure(tiny_scorer, packed):
    ids, segments = packed
    words = tiny_scorer.words(ids, segments, True)
    erased = np.zeros((2, len(words)), dtype=bool)
    erased[1, [0, 6, 11]] = True  # "looking", "laptops" (2 pieces), "initech"
    out_ids, out_segments = tiny_scorer.erase(ids, segments, words, erased)
    np.testing.assert_array_equal(out_ids[0], ids)
    tokens = [t for t in tiny_scorer.tokens(out_ids[1]) if t != "[PAD]"]
    assert tokens == ("[CLS] for a laptop ; acme wireless new ; globex vintage camera [SEP] "
                      "wireless laptop pro [SEP]").split()
    assert (out_ids[1] != 0).sum() == (ids != 0).sum() - 4
    assert out_segments[1][tokens.index("wireless", 8)] == 1


@pytest.mark.parametrize("target", ["probability", "logit"])
def test_integrated_gradients_is_complete(tiny_scorer, packed, target):
    result = ta.integrated_gradients(tiny_scorer, *packed, steps=32, target=target)
    difference = result["score"] - result["baseline_score"]
    assert abs(difference) > 1e-3  # the check below must not be vacuous
    assert abs(result["attributions"].sum() - difference) <= 0.01 * abs(difference)
    assert result["completeness_error"] < 0.01
    assert np.all(result["attributions"][np.asarray(packed[0]) == 0] == 0)  # padding


def test_gauss_legendre_beats_a_riemann_sum(tiny_scorer, packed):
    errors = {rule: ta.integrated_gradients(tiny_scorer, *packed, steps=4,
                                            rule=rule)["completeness_error"]
              for rule in ("gauss_legendre", "riemann_middle")}
    assert errors["gauss_legendre"] < errors["riemann_middle"]
    weights = ta.quadrature(32)[1]
    assert weights.sum() == pytest.approx(1.0)


SHARP_PAIRS = ([USER_TEXT, "acme camera", "globex vintage laptop"],
               [ITEM_TEXT, "globex phone", "initech camera pro"])


def test_adaptive_steps_reach_the_tolerance_where_fixed_few_steps_do_not(sharp_scorer):
    ids, segments = sharp_scorer.pack(*SHARP_PAIRS)
    fixed = ta.integrated_gradients(sharp_scorer, ids, segments, steps=2)
    assert np.all(fixed["completeness_error"] > 0.02), fixed["completeness_error"]
    adaptive = ta.integrated_gradients(sharp_scorer, ids, segments, steps=2, tolerance=0.01,
                                       max_steps=64)
    assert np.all(adaptive["converged"])
    assert np.all(adaptive["completeness_error"] < 0.01), adaptive["completeness_error"]
    # Only the rows that needed it doubled, each as far as it needed.
    assert adaptive["steps"].tolist() == [8, 4, 4]
    # Each row's result is that of a fixed run at the steps it used.
    for row, steps in enumerate(adaptive["steps"]):
        alone = ta.integrated_gradients(sharp_scorer, ids[row], segments[row], steps=int(steps))
        np.testing.assert_allclose(adaptive["attributions"][row], alone["attributions"],
                                   atol=1e-6)
        assert adaptive["absolute_error"][row] == pytest.approx(alone["absolute_error"],
                                                                abs=1e-6)


def test_examples_that_do_not_converge_are_reported(sharp_scorer):
    ids, segments = sharp_scorer.pack(*SHARP_PAIRS)
    out = ta.integrated_gradients(sharp_scorer, ids, segments, steps=2, tolerance=0.01,
                                  max_steps=4)
    assert out["converged"].tolist() == [False, True, True]
    assert out["steps"].tolist() == [4, 4, 4]
    assert out["completeness_error"][0] > 0.01  # kept and reported, not hidden
    assert np.all(np.isfinite(out["attributions"]))
    difference = out["score"] - out["baseline_score"]
    np.testing.assert_allclose(out["absolute_error"],
                               np.abs(out["attributions"].sum(-1) - difference), atol=1e-9)
    # One row in, scalars out, as in the fixed mode.
    single = ta.integrated_gradients(sharp_scorer, ids[0], segments[0], steps=2,
                                     tolerance=0.01, max_steps=4)
    assert single["steps"] == 4 and not single["converged"]


def test_explicit_steps_stay_fixed(sharp_scorer):
    ids, segments = sharp_scorer.pack(*SHARP_PAIRS)
    out = ta.integrated_gradients(sharp_scorer, ids, segments, steps=2)
    assert "converged" not in out and out["steps"].tolist() == [2, 2, 2]
    raw = ta.integrated_gradients_tensors(
        sharp_scorer.model, ids, segments,
        (sharp_scorer.pad_id, sharp_scorer.cls_id, sharp_scorer.sep_id),
        sharp_scorer.pad_id, steps=2)
    np.testing.assert_allclose(out["attributions"], raw["attributions"].numpy(), atol=1e-7)
    # max_steps without a tolerance changes nothing.
    capped = ta.integrated_gradients(sharp_scorer, ids, segments, steps=2, max_steps=64)
    np.testing.assert_array_equal(capped["attributions"], out["attributions"])
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        ta.integrated_gradients(sharp_scorer, ids, segments, tolerance=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        ta.integrated_gradients(sharp_scorer, ids, segments, steps=32, tolerance=0.01,
                                max_steps=16)


def test_batched_rows_match_single_rows(tiny_scorer):
    ids, segments = tiny_scorer.pack([USER_TEXT, "acme camera"], [ITEM_TEXT, "globex phone"])
    batch = ta.integrated_gradients(tiny_scorer, ids, segments)
    for row in range(2):
        single = ta.integrated_gradients(tiny_scorer, ids[row], segments[row])
        np.testing.assert_allclose(batch["attributions"][row], single["attributions"],
                                   atol=1e-6)


def test_gradient_x_input_matches_a_hand_written_tape(tiny_scorer, packed):
    model = tiny_scorer.model
    ids, segments = (tf.constant(a[None]) for a in packed)
    embeddings = model.token_embeddings(ids)
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        score = tf.sigmoid(model.logit_from_token_embeddings(embeddings, segments,
                                                             model.padding_mask(ids)))
    expected = tf.reduce_sum(tape.gradient(score, embeddings) * embeddings, -1)[0].numpy()
    np.testing.assert_allclose(ta.gradient_x_input(tiny_scorer, *packed), expected, atol=1e-6)


def test_attention_rollout_is_a_distribution_over_real_tokens(tiny_scorer, packed):
    relevance = ta.attention_rollout(tiny_scorer, *packed)
    assert relevance.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.all(relevance >= 0) and np.all(relevance[np.asarray(packed[0]) == 0] == 0)


def test_occlusion_is_the_score_drop_of_erasing_each_word(tiny_scorer, packed):
    ids, segments = packed
    words = tiny_scorer.words(ids, segments, True)
    values = ta.occlusion(tiny_scorer, ids, segments, words)
    score = tiny_scorer.probabilities(ids[None], segments[None])[0]
    erased = np.zeros(len(words), dtype=bool)
    erased[3] = True
    without = tiny_scorer.probabilities(*tiny_scorer.erase(ids, segments, words, erased))[0]
    assert values[3] == pytest.approx(score - without, abs=1e-6)


def test_to_words_sums_pieces(tiny_scorer, packed):
    words = tiny_scorer.words(*packed, has_query=True)
    token_scores = np.arange(len(packed[0]), dtype=float)
    word_scores = ta.to_words(token_scores, words)
    assert word_scores[6] == sum(words[6].positions)  # "laptops" = laptop + ##s


def test_random_attributions_are_seeded():
    np.testing.assert_array_equal(ta.random_attributions(5, 3), ta.random_attributions(5, 3))
    assert not np.array_equal(ta.random_attributions(5, 3), ta.random_attributions(5, 4))


@pytest.fixture(scope="module")
def planted():
    """A 1-layer model trained on pairs whose label is 1 exactly when "acme" is in the item."""
    rng = np.random.default_rng(0)
    filler = [w for w in WORDS if w != "acme"]

    def sample(n):
        users, items, labels = [], [], []
        for _ in range(n):
            words = list(rng.choice(filler, 4))
            label = rng.random() < 0.5
            if label:
                words[rng.integers(4)] = "acme"
            users.append(" ".join(rng.choice(filler, 6)))
            items.append(" ".join(words))
            labels.append(float(label))
        return users, items, np.array(labels, np.float32)

    packer = make_packer()
    model = make_model(seed=1, num_layers=1)
    users, items, labels = sample(1500)
    packed = packer(tf.constant(users), tf.constant(items))
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(dict(packed), labels, epochs=3, batch_size=32, verbose=0)
    scorer = PairScorer(model, packer)
    users, items, labels = sample(40)
    return scorer, [(u, i) for u, i, y in zip(users, items, labels) if y == 1][:10]


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_x_input", "occlusion",
                                    "attention_rollout", "shap"])
def test_planted_signal_is_recovered(planted, method):
    scorer, positives = planted
    if method == "shap":
        pytest.importorskip("shap")
        from bert_recommender.explainability.shap_attributions import shap_word_attributions
    for user, item in positives:
        ids, segments = (a[0] for a in scorer.pack([user], [item]))
        words = scorer.words(ids, segments, has_query=False)
        assert scorer.probabilities(ids[None], segments[None])[0] > 0.9
        if method == "integrated_gradients":
            values = ta.to_words(ta.integrated_gradients(scorer, ids, segments)["attributions"],
                                 words)
        elif method == "gradient_x_input":
            values = ta.to_words(ta.gradient_x_input(scorer, ids, segments), words)
        elif method == "attention_rollout":
            values = ta.to_words(ta.attention_rollout(scorer, ids, segments), words)
        elif method == "occlusion":
            values = ta.occlusion(scorer, ids, segments, words)
        else:
            values, _ = shap_word_attributions(scorer, ids, segments, words, max_evals=64)
        assert words[int(np.argmax(values))].text == "acme", (method, user, item)
