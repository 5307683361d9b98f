"""GRU4Rec (models/gru4rec.py) and its kind (trainer/kinds/gru4rec.py): the user state is
the GRU's state after the newest history item, the model learns an order a bag of items
cannot, and it trains, exports and recommends through the registry alone."""

import os

import keras
import numpy as np
import pytest

from bert_recommender.models.gru4rec import GRU4Rec
from tests.harness import BACKEND, MICRO_OVERRIDES, REPO

NUM_ITEMS, HISTORY, DIM = 12, 4, 8


def model(loss="bce", gru_layers=1, seed=0):
    keras.utils.set_random_seed(seed)
    m = GRU4Rec(num_items=NUM_ITEMS, max_history=HISTORY, embedding_dim=DIM,
                gru_layers=gru_layers, dropout=0.0, loss=loss, catalogue_size=NUM_ITEMS)
    m(batch(np.array([[1, 2, 0, 0]]), np.array([3])))
    return m


def batch(history, item):
    return {"history_index": np.asarray(history, np.int32),
            "item_index": np.asarray(item, np.int32)}


def test_user_state_is_the_gru_state_after_the_newest_item():
    m = model()
    state = m.user_state(batch([[5, 3, 7, 0]], [1]))  # most recent first: 5 is the newest
    oldest_first = m.item_vectors(None, np.array([[7, 3, 5]], np.int32))
    expected = m.output_projection(m.grus[0](oldest_first))  # no padding, no mask
    np.testing.assert_allclose(np.asarray(state["user"]), np.asarray(expected), atol=1e-5)
    # The order matters (a bag of items would not see it) and padding does not.
    swapped = m.user_state(batch([[7, 3, 5, 0]], [1]))["user"]
    assert not np.allclose(np.asarray(swapped), np.asarray(expected), atol=1e-4)
    padded = m.user_state(batch([[5, 3, 7, 0]], [1]))["user"]
    np.testing.assert_allclose(np.asarray(padded), np.asarray(state["user"]), atol=1e-6)
    empty = m.user_state(batch([[0, 0, 0, 0]], [1]))
    assert not np.asarray(empty["user"]).any() and not np.asarray(empty["interest_mask"]).any()


@pytest.mark.parametrize("gru_layers", [1, 2])
def test_logits_equal_the_catalogue_matrix_and_the_config_round_trips(gru_layers, tmp_path):
    m = model(gru_layers=gru_layers)
    x = batch([[1, 2, 0, 0], [4, 0, 0, 0], [6, 5, 4, 3]], [3, 9, 12])
    logits = np.asarray(m(x))
    items = np.arange(1, NUM_ITEMS + 1, dtype=np.int32)
    matrix = np.asarray(m.score_matrix(m.user_state(x), m.item_vectors(None, items), items))
    np.testing.assert_allclose(logits, matrix[np.arange(3), x["item_index"] - 1], atol=1e-5)
    clone = GRU4Rec.from_config(m.get_config())
    clone(x)
    clone.set_weights(m.get_weights())
    np.testing.assert_allclose(np.asarray(clone(x)), logits, atol=1e-6)
    path = str(tmp_path / "model.keras")
    m.save(path)
    np.testing.assert_allclose(np.asarray(keras.models.load_model(path)(x)), logits, atol=1e-6)


def test_learns_the_next_item_of_a_sequence():
    """Each user's next item follows its last one (i -> i + 1): the GRU must read which
    item came last, which the mean of the history alone does not give."""
    rng = np.random.default_rng(0)
    starts = rng.integers(1, NUM_ITEMS - HISTORY, size=1024)
    history = np.stack([starts + HISTORY - 1 - k for k in range(HISTORY)], axis=1)
    lengths = rng.integers(1, HISTORY + 1, size=len(starts))
    history = np.where(np.arange(HISTORY)[None, :] < lengths[:, None], history, 0)
    target = history[:, 0] + 1
    m = model(loss="softmax")
    m.set_item_counts(target)
    m.compile(optimizer=keras.optimizers.Adam(1e-2),
              loss=keras.losses.BinaryCrossentropy(from_logits=True))
    m.fit(batch(history, target), np.ones(len(target), np.float32), batch_size=64,
          epochs=15, verbose=0)
    items = np.arange(1, NUM_ITEMS + 1, dtype=np.int32)
    x = batch(history[:200], target[:200])
    scores = np.asarray(m.score_matrix(m.user_state(x), m.item_vectors(None, items), items))
    hit = (scores.argmax(axis=1) + 1 == target[:200]).mean()
    assert hit > 0.9, hit


@pytest.mark.skipif(BACKEND != "tensorflow", reason="trains and exports under TensorFlow")
def test_the_kind_trains_exports_and_recommends_through_the_registry(tmp_path):
    from trainer import config as config_lib
    from trainer import kinds, runs
    from trainer.serving import export, recommend_lib
    from trainer.training import train_lib

    cfg = config_lib.load_config(os.path.join(REPO, "configs", "tiny.yaml"), MICRO_OVERRIDES + [
        "model.kind=gru4rec", "train.loss=softmax", "model.hidden_dim=16", "train.epochs=2"])
    assert type(kinds.for_config(cfg)).__name__ == "GRU4RecKind"
    model_dir = str(tmp_path / "gru4rec")
    results = train_lib.train(cfg, model_dir)
    assert 0.0 <= results["test"]["auc"] <= 1.0
    run = runs.open_run(model_dir)
    assert isinstance(run.model, GRU4Rec) and len(run.item_index) == len(run.catalogue)
    recommender = recommend_lib.Recommender(model_dir)
    history = run.item_index.item_ids[:2]
    top = recommender.recommend([""], [history], k=5)[0]
    assert len(top) == 5 and not {r["item_id"] for r in top} & set(history)
    serve = export.load_serving_fn(os.path.join(model_dir, "export"), "retrieve")
    served = serve(query=np.array([""]), history_text=np.array([["", ""]]),
                   history_ids=np.array([history]), k=np.int32(5))
    assert [i.decode() for i in served["item_ids"].numpy()[0]] == [r["item_id"] for r in top]
