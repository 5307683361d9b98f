"""Text pairs, in-graph tokenization/truncation, TFRecord shards and dataset dtypes."""

import numpy as np
import pytest
import tensorflow as tf

from bert_recommender.models.layers.text_pair_packer import TextPairPacker
from trainer.data import input_pipeline
from trainer.data.canonical import Catalogue, Example, Item

WORDS = ["laptop", "phone", "red", "blue", "i", "want", "a", "new", "acme", "globex", ";", "."]


@pytest.fixture(scope="module")
def tokenizer():
    return input_pipeline.make_tokenizer(vocabulary=input_pipeline.RESERVED_TOKENS + WORDS)


def test_user_side_puts_query_then_newest_history_first():
    text = input_pipeline.user_side_text("i want a laptop", ["oldest", "middle", "newest"], 2)
    assert text == "i want a laptop ; newest ; middle"
    assert input_pipeline.user_side_text("", ["a", "b"], 5) == "b ; a"
    assert input_pipeline.user_side_text("q", ["a"], 0) == "q"


def test_packing_layout(tokenizer):
    packer = TextPairPacker(tokenizer, sequence_length=12, item_max_tokens=4)
    out = packer(tf.constant(["i want a laptop"]), tf.constant(["red phone"]))
    ids = tokenizer.token_to_id
    expected = [ids("[CLS]"), ids("i"), ids("want"), ids("a"), ids("laptop"), ids("[SEP]"),
                ids("red"), ids("phone"), ids("[SEP]"), 0, 0, 0]
    assert out["token_ids"].numpy().tolist() == [expected]
    assert out["segment_ids"].numpy().tolist() == [[0] * 6 + [1] * 3 + [0] * 3]
    assert out["token_ids"].dtype == tf.int32 and out["segment_ids"].dtype == tf.int32


def test_truncation_never_drops_the_candidate(tokenizer):
    packer = TextPairPacker(tokenizer, sequence_length=10, item_max_tokens=4)
    long_user = " ".join(["red"] * 50)
    out = packer(tf.constant([long_user, "blue"]),
                 tf.constant(["acme globex new laptop phone", "phone"]))
    ids = out["token_ids"].numpy()
    segments = out["segment_ids"].numpy()
    item_ids = [tokenizer.token_to_id(w) for w in ["acme", "globex", "new", "laptop"]]
    # Row 0: user side cut to fit; the item keeps its first item_max_tokens tokens.
    assert ids[0][segments[0] == 1].tolist() == item_ids + [tokenizer.token_to_id("[SEP]")]
    assert (ids[0] != 0).all()  # the sequence is full
    # Row 1: short input is not truncated at all.
    assert ids[1][segments[1] == 1].tolist() == [tokenizer.token_to_id("phone"),
                                                 tokenizer.token_to_id("[SEP]")]


def test_packer_rejects_vocabulary_without_pad_at_zero():
    bad = input_pipeline.make_tokenizer(
        vocabulary=["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "x"])
    with pytest.raises(ValueError, match="PAD"):
        TextPairPacker(bad, sequence_length=8, item_max_tokens=2)


def _table():
    catalogue = Catalogue(a=Item("a", {"title": "red laptop", "categories": "laptop"}),
                          b=Item("b", {"title": "blue phone"}))
    examples = [Example("u1", "x", ("a",), "b", 1, query="i want a new phone",
                        extras={"true_probability": 0.9}),
                Example("u1", "x", ("a",), "a", 0, extras={"true_probability": 0.1}),
                Example("u2", "y", (), "b", 0, extras={"true_probability": 0.2})]
    ids = input_pipeline.IdVocabulary.build(examples[:2], catalogue)
    return input_pipeline.make_pair_table(examples, catalogue, ["title", "categories"], 5, ids)


def test_pair_table_columns():
    table = _table()
    assert table.user_text.tolist() == ["i want a new phone ; red laptop", "red laptop", ""]
    assert table.item_text.tolist() == ["blue phone", "red laptop. laptop", "blue phone"]
    assert table.group.tolist() == [0, 0, 1]
    assert table.user_index.tolist() == [1, 1, 0]  # u2 is unseen in training -> 0
    assert table.item_index.tolist() == [2, 1, 2]
    np.testing.assert_allclose(table.true_probability, [0.9, 0.1, 0.2])


def test_tfrecords_give_the_same_batches_as_memory(tmp_path, tokenizer):
    table = _table()
    paths = input_pipeline.write_tfrecords(table, str(tmp_path), "test", examples_per_shard=2)
    assert len(paths) == 2 and all(p.endswith(".tfrecord") for p in paths)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    packer = TextPairPacker(tokenizer, sequence_length=16, item_max_tokens=6)
    a = list(input_pipeline.make_dataset(table, 8, packer=packer))
    b = list(input_pipeline.make_dataset(paths, 8, packer=packer))
    for key in ("token_ids", "segment_ids", "user_index", "item_index"):
        np.testing.assert_array_equal(a[0][0][key].numpy(), b[0][0][key].numpy())
    np.testing.assert_array_equal(a[0][1].numpy(), b[0][1].numpy())


def test_dataset_holds_only_int_and_float_tensors(tokenizer):
    packer = TextPairPacker(tokenizer, sequence_length=16, item_max_tokens=6)
    ds = input_pipeline.make_dataset(_table(), 2, packer=packer, training=True, seed=1)
    features, labels = ds.element_spec
    for spec in list(features.values()) + [labels]:
        assert spec.dtype in (tf.int32, tf.float32)
    # Training batches are full (drop_remainder): 3 rows at batch size 2 give one batch of 2.
    assert [int(f["token_ids"].shape[0]) for f, _ in ds] == [2]


def test_cached_tokens_give_the_same_examples_reshuffled_each_epoch(tokenizer):
    table = _table()
    packer = TextPairPacker(tokenizer, sequence_length=16, item_max_tokens=6)
    plain = list(input_pipeline.make_dataset(table, 1, packer=packer))
    cached = input_pipeline.make_dataset(table, 1, packer=packer, training=True, seed=3,
                                         cache_tokens=True, repeat=True)
    rows = [tuple(f["token_ids"].numpy()[0]) for f, _ in cached.take(30)]
    expected = sorted(tuple(f["token_ids"].numpy()[0]) for f, _ in plain)
    epochs = [rows[i:i + 3] for i in range(0, 30, 3)]
    assert all(sorted(epoch) == expected for epoch in epochs)  # each epoch: every row once
    assert len({tuple(epoch) for epoch in epochs}) > 1  # in a new order across epochs


class _RecordingFeaturizer:
    """Reads the query only, and records which table columns reach it."""

    text_columns = ("query",)

    def __init__(self):
        self.seen = set()

    def features(self, batch):
        self.seen |= set(batch)
        return {"query_length": tf.strings.length(batch["query"])}


def test_the_dataset_carries_only_the_text_columns_the_featurizer_reads():
    table = input_pipeline.PairTable(
        user_text=np.array(["a long joined history " * 50] * 3, dtype=object),
        item_text=np.array(["x", "y", "z"], dtype=object),
        label=np.array([1, 0, 0], np.float32), group=np.zeros(3, np.int64),
        user_index=np.ones(3, np.int32), item_index=np.arange(3, dtype=np.int32),
        query=np.array(["q", "", "qq"], dtype=object))
    featurizer = _RecordingFeaturizer()
    (features, labels), = input_pipeline.make_dataset(table, 3, packer=featurizer).take(1)
    assert featurizer.seen == {"query", "label", "group", "user_index", "item_index"}
    assert features["query_length"].numpy().tolist() == [1, 0, 2]
    # Without a featurizer (id models) no text column is read at all.
    (ids, _), = input_pipeline.make_dataset(table, 3).take(1)
    assert set(ids) == {"user_index", "item_index"}
