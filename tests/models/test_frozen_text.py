"""The frozen-text item tower: adapters, the pretrained text encoder, and the two-tower
model over a frozen table of text vectors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_recommender.models.layers.text_adapter import TextAdapter, TokenStatesAdapter
from bert_recommender.models.pretrained_text import PretrainedTextEncoder
from bert_recommender.models.two_tower import TwoTowerRecommender
from tests.harness import write_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_whitening_is_a_learned_centre_then_a_projection():
    adapter = TextAdapter(3, "whitening", dropout=0.0)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    adapter(x)
    centre = np.random.default_rng(1).normal(size=(1, 5)).astype(np.float32)
    adapter.centre.assign(centre)
    expected = (x - centre[0]) @ adapter.kernel.numpy()[0]
    np.testing.assert_allclose(adapter(x), expected, rtol=1e-5, atol=1e-5)


def test_the_mixture_starts_as_the_mean_of_its_experts_and_its_gate_learns():
    adapter = TextAdapter(3, "moe", experts=4, dropout=0.0)
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    out = adapter(x)
    kernel, centre = adapter.kernel.numpy(), adapter.centre.numpy()
    each = np.stack([(x - centre[e]) @ kernel[e] for e in range(4)], axis=1)
    np.testing.assert_allclose(out, each.mean(axis=1), rtol=1e-5, atol=1e-5)
    gate = np.zeros((5, 4), np.float32)
    gate[:, 2] = 50.0  # one expert takes (almost) every input with a positive sum
    adapter.gate.assign(gate)
    positive = x.sum(axis=1) > 0.5
    np.testing.assert_allclose(np.asarray(adapter(x))[positive], each[positive, 2],
                               rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["linear", "whitening", "moe"])
def test_every_adapter_round_trips_its_config(kind):
    adapter = TextAdapter(7, kind, experts=3, dropout=0.1)
    again = TextAdapter.from_config(adapter.get_config())
    assert (again.kind, again.output_dim, again.experts) == (kind, 7, 3 if kind == "moe" else 1)
    assert again(np.zeros((2, 4), np.float32)).shape == (2, 7)


def test_an_unknown_adapter_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        TextAdapter(4, "mlp")


def test_the_encoder_batches_by_length_without_changing_a_vector(checkpoint):
    encoder = PretrainedTextEncoder.from_pretrained(checkpoint, max_tokens=12, pooling="mean")
    texts = ["part 1 kit 1. tools. brand 1.", "", "kit", "part 2 kit 2 tools brand 0 part 3"]
    batched = encoder.encode(texts, batch_size=2)
    one_by_one = np.concatenate([np.asarray(encoder(tf.constant([t]))) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)
    assert batched.shape == (4, 16)
    assert not batched[1].any()  # an empty text is no vector
    assert np.abs(batched[[0, 2, 3]]).sum(axis=1).min() > 0
    assert not encoder.backbone.trainable


def test_trained_top_layers_start_as_the_checkpoints_own(tmp_path):
    """The states below the top layer, through a copy of that layer and the same pooling,
    give the checkpoint's pooled vectors; the copy trains, the checkpoint does not."""
    checkpoint = write_tiny_checkpoint(tmp_path / "two_layers", num_layers=2)
    texts = ["part 1 kit 1. tools. brand 1.", "", "kit", "part 2 kit 2 tools brand 0 part 3"]
    whole = PretrainedTextEncoder.from_pretrained(checkpoint, 12, "mean").encode(texts)
    below = PretrainedTextEncoder.from_pretrained(checkpoint, 12, "mean", trainable_layers=1)
    states = below.encode(texts, batch_size=2)
    assert below.feature_dim == 12 * 16 and states.shape == (4, 12 * 16)
    assert not states[1].any()  # an empty text has no states
    per_token = states.reshape(4, 12, 16)
    assert not per_token[2, 3:].any() and per_token[2, :3].any(1).all()  # [CLS] kit [SEP]
    adapter = TokenStatesAdapter([layer.get_config() for layer in below.top_layers], 12, 16,
                                 "mean", output_dim=8)
    adapter.build(states.shape)
    adapter.initialize_from(below.top_layers)
    np.testing.assert_allclose(np.asarray(adapter.pooled(states)), whole, atol=1e-5)
    assert adapter(states[None]).shape == (1, 4, 8)
    top_weights = {id(w) for layer in adapter.top_layers for w in layer.trainable_weights}
    assert top_weights <= {id(w) for w in adapter.trainable_weights}
    assert not below.backbone.trainable
    clone = TokenStatesAdapter.from_config(adapter.get_config())
    clone.build(states.shape)
    clone.set_weights(adapter.get_weights())
    np.testing.assert_allclose(np.asarray(clone(states)), np.asarray(adapter(states)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="trainable_layers"):
        PretrainedTextEncoder.from_pretrained(checkpoint, 12, "mean", trainable_layers=3)
    with pytest.raises(ValueError, match="pooler"):
        PretrainedTextEncoder.from_pretrained(checkpoint, 12, "cls", trainable_layers=1)


def _frozen_model(loss="softmax", num_items=0, rows=6, dim=8):
    model = TwoTowerRecommender(None, num_items=num_items, max_history=3, embedding_dim=8,
                                user_layers=1, loss=loss, catalogue_size=rows - 1,
                                text_vectors_shape=(rows, dim), adapter="moe",
                                adapter_experts=2, adapter_dropout=0.0, dropout=0.0)
    table = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    model.set_text_vectors(table)
    return model, table


def _frozen_inputs():
    return {"item_index": np.array([1, 0], np.int32),
            "history_index": np.array([[2, 3, 0], [4, 0, 0]], np.int32),
            "item_text_index": np.array([1, 5], np.int32),
            "history_text_index": np.array([[2, 3, 0], [4, 0, 0]], np.int32)}


def test_frozen_item_vectors_are_the_adapted_table_rows():
    model, table = _frozen_model()
    x = _frozen_inputs()
    model(x)
    assert not np.asarray(model.text_table)[0].any()  # row 0 is "no text"
    vectors = np.asarray(model.item_vectors(np.array([3, 0]), np.array([0, 0])))
    np.testing.assert_allclose(vectors[0], np.asarray(model.text_adapter(table[3:4]))[0],
                               rtol=1e-5, atol=1e-5)
    assert not vectors[1].any()
    # The text table trains nothing; the adapter does.
    trainable = {w.path for w in model.trainable_weights}
    assert not any("text_table" in p for p in trainable)
    assert any("text_adapter" in p for p in trainable)


def test_the_logit_from_given_text_vectors_equals_the_table_path():
    model, table = _frozen_model(num_items=5)
    x = _frozen_inputs()
    expected = np.asarray(model(x))
    # History (most recent first) then the candidate, each as the raw vector of its row;
    # row 0 (no text) is a zero vector.
    rows = np.concatenate([x["history_text_index"], x["item_text_index"][:, None]], 1)
    vectors = np.asarray(model.text_table)[rows]
    got = np.asarray(model.logit_from_text_vectors(vectors, x["history_index"],
                                                   x["item_index"]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # A changed vector changes the logit (the path reads the vectors, not the table).
    vectors[0, -1] += 1.0
    assert not np.allclose(np.asarray(model.logit_from_text_vectors(
        vectors, x["history_index"], x["item_index"]))[0], expected[0])


def test_a_text_outside_the_table_is_scored_from_its_extra_vector():
    model, table = _frozen_model()
    x = _frozen_inputs()
    inside = np.asarray(model(x))
    # The same texts, the candidates' vectors given as extra rows 6 and 7 instead.
    extra = {**x, "item_text_index": np.array([6, 7], np.int32),
             "extra_text_vectors": table[[1, 5]]}
    np.testing.assert_allclose(np.asarray(model(extra)), inside, rtol=1e-5, atol=1e-5)
    state = model.user_state(extra)
    np.testing.assert_allclose(np.asarray(model.score(state, model.candidate_vectors(extra),
                                                      extra["item_index"])),
                               inside, rtol=1e-5, atol=1e-5)


def test_the_full_softmax_runs_over_frozen_text_vectors_and_skips_untrained_ids():
    model, _ = _frozen_model(loss="full_softmax", num_items=5)
    model.set_trained_items(np.array([0, 1, 1, 1, 1, 0], bool))
    x = _frozen_inputs()
    x["item_index"] = np.array([1, 2], np.int32)
    model(x)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    before = model.item_id_embedding.embeddings.numpy().copy()
    loss = model.train_on_batch(x, np.ones(2, np.float32))
    after = model.item_id_embedding.embeddings.numpy()
    # Cross-entropy over 5 items starts near log(5), whatever the pointwise loss says.
    assert 0.5 * np.log(5) < float(np.ravel(loss)[0]) < 2 * np.log(5)
    assert not np.allclose(before[1], after[1])
    np.testing.assert_array_equal(before[5], after[5])  # item 5: never trained, no id


def test_items_training_never_saw_are_no_negatives_of_the_full_softmax():
    model, table = _frozen_model(loss="full_softmax", num_items=5)
    model.set_trained_items(np.array([0, 1, 1, 1, 1, 0], bool))
    x = {**_frozen_inputs(), "item_index": np.array([1, 2], np.int32)}

    def softmax_loss():
        model(x, training=True)
        return float(np.asarray(model.losses[-1]))

    loss = softmax_loss()
    moved = table.copy()
    moved[5] *= -3.0  # the untrained item's text: no effect on the loss
    model.set_text_vectors(moved)
    assert softmax_loss() == pytest.approx(loss, rel=1e-6)
    moved[4] *= -3.0  # a trained item's text: a negative, so it counts
    model.set_text_vectors(moved)
    assert softmax_loss() != pytest.approx(loss, rel=1e-6)


def test_the_frozen_model_reloads_with_its_table(tmp_path):
    model, _ = _frozen_model(num_items=5)
    x = _frozen_inputs()
    expected = np.asarray(model(x))
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(np.asarray(again(x)), expected, rtol=1e-5, atol=1e-5)
    assert again.text_vectors_shape == (6, 8) and again.adapter == "moe"


def test_frozen_text_vectors_and_an_encoder_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        TwoTowerRecommender(keras.layers.Dense(2), embedding_dim=8,
                            text_vectors_shape=(3, 4))
    model, _ = _frozen_model()
    with pytest.raises(ValueError, match="built for"):
        model.set_text_vectors(np.zeros((2, 8)))


def test_cosine_similarity_compares_unit_vectors_over_a_temperature():
    model = TwoTowerRecommender(None, num_items=5, max_history=3, embedding_dim=8,
                                user_layers=1, max_interest=True, similarity="cosine",
                                temperature=0.1, dropout=0.0)
    x = {"item_index": np.array([1, 2], np.int32),
         "history_index": np.array([[2, 3, 0], [4, 0, 0]], np.int32)}
    logits = np.asarray(model(x))
    state = model.user_state(x)
    items = np.asarray(model.candidate_vectors(x))
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    user, interests = np.asarray(state["user"]), np.asarray(state["interests"])
    mask = np.asarray(state["interest_mask"]).astype(bool)
    for row in range(2):
        cosines = unit(interests[row][mask[row]]) @ unit(items[row])
        expected = (unit(user[row]) @ unit(items[row]) + cosines.max()) / 0.1
        assert logits[row] == pytest.approx(expected, rel=1e-4, abs=1e-4)
    matrix = np.asarray(model.score_matrix(state, items, x["item_index"]))
    np.testing.assert_allclose(np.diag(matrix), logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="similarity"):
        TwoTowerRecommender(None, num_items=5, embedding_dim=8, similarity="l2")


def test_inference_computes_each_distinct_history_once_with_the_same_logits():
    """An impression repeats its user's history per candidate: scoring computes the user
    state once per distinct history, with the logits of the row-by-row computation."""
    model, _ = _frozen_model(num_items=5)
    histories = np.array([[2, 3, 0], [2, 3, 0], [4, 0, 0], [2, 3, 0], [4, 1, 0]], np.int32)
    x = {"item_index": np.array([1, 2, 3, 4, 5], np.int32), "history_index": histories,
         "item_text_index": np.array([1, 2, 3, 4, 5], np.int32),
         "history_text_index": histories.copy()}
    x["history_text_index"][3, 1] = 0  # same ids, one text absent: another history
    deduplicated = np.asarray(model(x, training=False))
    model.deduplicate_items = False
    np.testing.assert_allclose(deduplicated, np.asarray(model(x, training=False)),
                               rtol=1e-5, atol=1e-5)
    # In a compiled predict too (what evaluation and the validation pass run).
    model.deduplicate_items = True
    model.compile()
    np.testing.assert_allclose(model.predict(x, batch_size=4, verbose=0).reshape(-1),
                               deduplicated, rtol=1e-5, atol=1e-5)
