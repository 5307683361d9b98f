"""The item-to-item neighbours baseline (models/baselines.py ``ItemKNN``) beyond the model
harness: what it counts from training sequences, how it scores a history, and that the
catalogue scores are the per-row scores."""

import numpy as np
import pytest

from bert_recommender.models.baselines import ItemKNN
from trainer.data import input_pipeline
from trainer.errors import UserInputError
from trainer import kinds


def prefix_rows(sequences, max_history=4):
    """The training rows of ``sequences`` (oldest first) as the sequential sources write
    them: every prefix with its next item, history most recent first, 0-padded."""
    history, target = [], []
    for sequence in sequences:
        for end in range(1, len(sequence)):
            recent = sequence[:end][::-1][:max_history]
            history.append(recent + [0] * (max_history - len(recent)))
            target.append(sequence[end])
    return (np.array(history, np.int32), np.array(target, np.int32),
            np.ones(len(target), np.float32))


def test_neighbours_count_each_ordered_pair_once_by_distance():
    # One user bought 1, 2, 3: pairs (1, 2) and (2, 3) one position apart, (1, 3) two.
    # Popularity = positives + 1: item 1 -> 1, items 2 and 3 -> 2. Exponent 1 divides the
    # co-occurrence of (a, b) by pop(a): P(b | a) up to the distance weights.
    history, target, label = prefix_rows([[1, 2, 3]])
    index, weight = ItemKNN.neighbours_of(history, target, label, num_items=4, neighbours=3,
                                          popularity_exponent=1.0)
    similarity = np.zeros((5, 5))
    for item in range(5):
        similarity[item, index[item]] += weight[item]
    expected = np.zeros((5, 5))
    expected[1, 2], expected[1, 3] = 1.0, 0.5
    expected[2, 1], expected[2, 3] = 0.5, 0.5
    expected[3, 2], expected[3, 1] = 0.5, 0.25
    np.testing.assert_allclose(similarity, expected)
    # The strongest neighbour first; item 4 (never bought) and index 0 have none.
    assert index[1, 0] == 2 and index[1, 1] == 3
    assert not weight[4].any() and not weight[0].any()


def test_each_item_keeps_its_strongest_neighbours():
    # Item 1 is followed by 2 in three sequences, by 3 in two and by 4 in one.
    sequences = [[1, 2]] * 3 + [[1, 3]] * 2 + [[1, 4]]
    history, target, label = prefix_rows(sequences)
    index, weight = ItemKNN.neighbours_of(history, target, label, num_items=4, neighbours=2,
                                          popularity_exponent=0.5)
    assert index[1].tolist() == [2, 3] and weight[1, 0] > weight[1, 1] > 0
    # Negatives count nothing.
    index, weight = ItemKNN.neighbours_of(history, target, np.zeros_like(label), num_items=4,
                                          neighbours=2, popularity_exponent=0.5)
    assert not weight.any()


def test_a_history_scores_by_decayed_similarity_and_breaks_ties_by_popularity():
    history, target, label = prefix_rows([[1, 2, 3], [4, 2]])
    model = ItemKNN(num_items=5, neighbours=4, recency_decay=0.5, popularity_exponent=1.0,
                    popularity_weight=0.0)
    model.set_neighbours(history, target, label)
    # History 3 then 1 (most recent first): candidate 2 gets sim(3, 2) + 0.5 * sim(1, 2)
    # = 1 / 2 + 0.5 * 1 / 1 (item 1: no positive, pop 1).
    rows = {"history_index": np.array([[3, 1, 0, 0]] * 3, np.int32),
            "item_index": np.array([2, 4, 5], np.int32)}
    scores = np.exp(np.asarray(model(rows), np.float64)) - ItemKNN.LOG_FLOOR  # the logit's log
    assert scores[0] == pytest.approx(1.0, rel=1e-5)
    assert scores[2] == pytest.approx(0.0, abs=1e-9)  # item 5 never bought
    # The catalogue scores are the per-row scores, for every candidate.
    catalogue = model.catalogue_scores(rows["history_index"][:1])
    assert catalogue.shape == (1, 6) and catalogue[0, 0] == 0.0
    for item in range(1, 6):
        one = {"history_index": rows["history_index"][:1], "item_index": np.array([item])}
        assert catalogue[0, item] == pytest.approx(float(np.asarray(model(one))[0]))

    # With a popularity tie-break, candidates no history item reaches rank by popularity:
    # item 2 (two positives) above item 5 (none), both far below any neighbour.
    model = ItemKNN(num_items=5, neighbours=4, recency_decay=0.5, popularity_exponent=1.0)
    model.set_neighbours(history, target, label)
    lonely = np.exp(model.catalogue_scores(np.array([[5, 0, 0, 0]], np.int32))[0][1:])
    lonely = np.concatenate([[0.0], lonely - ItemKNN.LOG_FLOOR])
    assert lonely[2] > lonely[3] > 0 and lonely[5] == pytest.approx(0.0, abs=1e-9)
    assert lonely.max() <= 1e-3 + 1e-9


def test_a_streamed_training_split_is_refused_with_what_to_do():
    kind = kinds.kind_class("item_knn")()
    streamed = input_pipeline.StreamingTable(paths=[], rows=0, positives=0,
                                             item_counts=np.zeros(3, np.int64))
    with pytest.raises(UserInputError, match="data.tfrecord_dir"):
        kind.fit_counts(ItemKNN(num_items=2, neighbours=1), streamed)
