"""Streaming data: `prepare` writes sharded TFRecords that hold exactly the in-memory tables,
and `train` streams from them (trainer/data/prepare.py)."""

import json
import os

import numpy as np
import pytest

from tests.harness import MICRO_OVERRIDES, REPO
from trainer import config as config_lib
from trainer.data import input_pipeline, prepare
from trainer.training import train_lib
from trainer.errors import ConfigError, DataError

TINY = os.path.join(REPO, "configs", "tiny.yaml")
COLUMNS = ("user_text", "item_text", "label", "group", "user_index", "item_index", "query",
           "history_index")


def micro(*overrides):
    return config_lib.load_config(TINY, MICRO_OVERRIDES + list(overrides))


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    """The micro config prepared in chunks of 7 examples and shards of 50 rows, so group
    ids cross chunk boundaries and every split spans several shards."""
    directory = str(tmp_path_factory.mktemp("prepared") / "micro")
    chunk = prepare.CHUNK_EXAMPLES
    prepare.CHUNK_EXAMPLES = 7
    try:
        prepare.prepare(micro("data.examples_per_shard=50"), directory)
    finally:
        prepare.CHUNK_EXAMPLES = chunk
    return directory


def user_indices(train, rows) -> list:
    """The ``user_index`` the input pipeline gives shard ``rows`` (from their user ids)."""
    position = {u: i + 1 for i, u in enumerate(train.users)}
    return [position.get(r["user_id"].decode(), 0) for r in rows]


def rows_of(table) -> list:
    return sorted(zip(*(table.columns()[c].tolist() if c != "history_index" else
                        [tuple(r) for r in table.history_index] for c in COLUMNS
                        if c != "group")))


def test_prepared_shards_hold_the_in_memory_tables(prepared_dir, tmp_path):
    cfg = micro("data.examples_per_shard=50")
    memory = train_lib.prepare_data(cfg, str(tmp_path / "memory"))
    streamed = train_lib.prepare_data(
        config_lib.load_config(TINY, MICRO_OVERRIDES + ["data.examples_per_shard=50",
                                                        f"data.tfrecord_dir={prepared_dir}"]),
        str(tmp_path / "unused"))
    assert streamed.ids == memory.ids
    assert streamed.vocabulary == memory.vocabulary
    for split in ("validation", "test"):
        for column in COLUMNS:
            np.testing.assert_array_equal(getattr(streamed.tables[split], column),
                                          getattr(memory.tables[split], column), column)
    train = streamed.tables["train"]
    assert isinstance(train, input_pipeline.StreamingTable)
    assert len(train.paths) > 1 and len(train) == len(memory.tables["train"])
    assert train.label_counts() == memory.tables["train"].label_counts()
    np.testing.assert_array_equal(np.sort(train.positive_item_indices()),
                                  np.sort(memory.tables["train"].positive_item_indices()))
    # The shards hold the train rows themselves, and one impression keeps one group id
    # across the chunks it was written in.
    read = list(input_pipeline.read_tfrecords(train.paths, max_history=cfg.data.max_history)
                .as_numpy_iterator())
    shards = input_pipeline.PairTable(
        **{c: np.array([r[c].decode() if isinstance(r[c], bytes) else r[c] for r in read],
                       dtype=object if c in ("user_text", "item_text", "query") else None)
           for c in COLUMNS})
    # Shards hold raw user ids; the pipeline numbers them from the sorted train users.
    shards.user_index = np.array(user_indices(train, read), np.int32)
    assert rows_of(shards) == rows_of(memory.tables["train"])
    groups_per_impression = {}
    for group, user_text, user_index in zip(shards.group, shards.user_text, shards.user_index):
        groups_per_impression.setdefault(group, set()).add((user_text, user_index))
    assert all(len(v) == 1 for v in groups_per_impression.values())
    assert len(groups_per_impression) == len(set(memory.tables["train"].group))


@pytest.mark.parametrize("source", ["movielens", "mind"])
def test_the_benchmark_loaders_stream_into_the_same_tables(source, tmp_path):
    """MovieLens (user by user from its rating arrays) and MIND (line by line) prepare
    exactly the tables their in-memory loaders give."""
    if source == "movielens":
        from tests.trainer.data.test_movielens import (make_movies, make_ratings,
                                                           write_csv_variant)
        data_dir = write_csv_variant(tmp_path / "ml" / "ml-latest-small", make_ratings(),
                                     make_movies())
        config = os.path.join(REPO, "configs", "movielens_tiny.yaml")
        overrides = ["data.movielens.min_positives=3", "data.movielens.eval_negatives=10"]
    else:
        from tests.trainer.data.test_mind import write_mind
        data_dir = write_mind(tmp_path / "mind")
        config = TINY
        overrides = ["data.source=mind", "data.mind.validation_fraction=0.3"]
    overrides += [f"data.data_dir={data_dir}", "data.vocab_size=100"]
    cfg = config_lib.load_config(config, overrides)
    from trainer.data import sources
    assert not sources.stream(cfg.data, str(tmp_path)).held
    memory = train_lib.prepare_data(cfg, str(tmp_path / "memory"))
    streamed = train_lib.prepare_data(config_lib.load_config(
        config, overrides + [f"data.tfrecord_dir={tmp_path / 'prepared'}"]), str(tmp_path))
    assert streamed.ids == memory.ids and streamed.vocabulary == memory.vocabulary
    for split in ("validation", "test"):
        assert streamed.splits[split] == memory.splits[split]
    train = streamed.tables["train"]
    assert train.label_counts() == memory.tables["train"].label_counts()
    read = list(input_pipeline.read_tfrecords(train.paths, max_history=cfg.data.max_history)
                .as_numpy_iterator())
    assert sorted(zip((r["item_text"].decode() for r in read),
                      (r["user_text"].decode() for r in read),
                      (float(r["label"]) for r in read), user_indices(train, read))) == sorted(
        zip(memory.tables["train"].item_text, memory.tables["train"].user_text,
            memory.tables["train"].label.tolist(), memory.tables["train"].user_index.tolist()))


def test_train_streams_from_a_prepared_directory(prepared_dir, tmp_path):
    cfg = micro("data.examples_per_shard=50", f"data.tfrecord_dir={prepared_dir}",
                "train.loss=softmax", "model.item_ids=true", "train.export=false")
    results = train_lib.train(cfg, str(tmp_path / "run"))
    positives = prepare.read_manifest(prepared_dir)["counts"]["train"]["positives"]
    # The in-batch softmax streams the clicked rows alone.
    assert results["train"]["steps_per_epoch"] == positives // cfg.train.batch_size
    assert results["test"]["examples"] > 0
    with open(tmp_path / "run" / "data_info.json") as f:
        assert json.load(f)["tfrecord_dir"] == prepared_dir


def test_a_prepared_directory_belongs_to_its_data_config(prepared_dir, tmp_path):
    other = micro("data.examples_per_shard=50", "data.vocab_size=90",
                  f"data.tfrecord_dir={prepared_dir}")
    with pytest.raises(ConfigError, match=r"prepared from another data config \(differs at "
                       r"data.vocab_size\)"):
        train_lib.train(other, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    # Reading settings are not part of it; preparing again is a no-op.
    same = micro("data.examples_per_shard=50", "data.shuffle_buffer=7")
    before = os.path.getmtime(os.path.join(prepared_dir, "manifest.json"))
    assert prepare.prepare(same, prepared_dir)["counts"]
    assert os.path.getmtime(os.path.join(prepared_dir, "manifest.json")) == before


def test_prepare_refuses_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and holds no manifest.json"):
        prepare.prepare(micro(), str(tmp_path / "busy"))
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]


def test_a_changed_vocabulary_file_is_refused(prepared_dir, tmp_path):
    import shutil
    copy = str(tmp_path / "copy")
    shutil.copytree(prepared_dir, copy)
    with open(os.path.join(copy, "vocab.txt"), "a") as f:
        f.write("extra\n")
    with pytest.raises(DataError, match="vocab.txt is not the vocabulary"):
        prepare.load(micro("data.examples_per_shard=50"), copy)


def test_a_failed_prepare_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(prepare.canonical, "write_catalogue", fail)
    with pytest.raises(OSError, match="disk full"):
        prepare.prepare(micro(), str(tmp_path / "out"))
    assert not [p for p in tmp_path.iterdir()]


def test_shard_writer_splits_blocks_and_shards(tmp_path):
    table = input_pipeline.PairTable(
        user_text=np.array([f"u{i}" for i in range(25)], dtype=object),
        item_text=np.array([f"i{i}" for i in range(25)], dtype=object),
        label=(np.arange(25) % 2).astype(np.float32), group=np.arange(25, dtype=np.int64),
        user_index=np.zeros(25, dtype=np.int32), item_index=np.arange(25, dtype=np.int32),
        user_id=np.array([f"user-{i % 5}" for i in range(25)], dtype=object))
    writer = input_pipeline.ShardWriter(str(tmp_path), "x", examples_per_shard=10)
    writer.write(table.subset(np.arange(7)))
    writer.write(table.subset(np.arange(7, 25)))
    paths = writer.close()
    assert [os.path.basename(p) for p in paths] == ["x-00000.tfrecord", "x-00001.tfrecord",
                                                    "x-00002.tfrecord"]
    rows = list(input_pipeline.read_tfrecords(paths).as_numpy_iterator())
    assert [r["user_text"].decode() for r in rows] == [f"u{i}" for i in range(25)]
    assert [r["query"] for r in rows] == [b""] * 25
    # The input pipeline numbers users by their position in a StreamingTable's sorted
    # train users (user-4 is not one of them: 0).
    batches = input_pipeline.make_dataset(paths, 25, users=["user-0", "user-1", "user-2",
                                                            "user-3"])
    (features, _), = list(batches)
    np.testing.assert_array_equal(features["user_index"].numpy(),
                                  [(i % 5 + 1) % 5 for i in range(25)])
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_independent_users_are_generated_in_parallel_into_the_same_rows(tmp_path):
    from trainer.data import synthetic
    params = dict(num_items=40, num_users=24, impressions_per_user=4,
                  candidates_per_impression=3, independent_users=True)
    _, whole = synthetic.stream(**params)
    parts = [list(synthetic.stream(**params, users=r)[1]) for r in ((0, 7), (7, 24))]
    assert parts[0] + parts[1] == list(whole)
    cfg = micro("data.synthetic.independent_users=true")
    memory = train_lib.prepare_data(cfg, str(tmp_path / "memory"))
    prepare.prepare(cfg, str(tmp_path / "prepared"))  # several processes generate users
    streamed = prepare.load(cfg, str(tmp_path / "prepared"))
    read = list(input_pipeline.read_tfrecords(streamed.train.paths,
                                              max_history=cfg.data.max_history)
                .as_numpy_iterator())
    table = memory.tables["train"]
    assert sorted(zip((r["user_text"].decode() for r in read),
                      (r["item_text"].decode() for r in read),
                      (float(r["label"]) for r in read),
                      user_indices(streamed.train, read))) == \
        sorted(zip(table.user_text, table.item_text, table.label.tolist(),
                   table.user_index.tolist()))
    def key(ex):  # the CSV round trip of the in-memory path writes [] extras as ""
        return ex.impression_id, ex.candidate, ex.label, ex.history, ex.query, ex.split
    assert [key(e) for e in streamed.splits["test"]] == [key(e) for e in memory.splits["test"]]


def test_an_error_in_a_reading_process_reaches_the_caller(tmp_path, monkeypatch):
    def broken(examples, *args):
        next(iter(examples))
        raise DataError("impression x: broken row")
        yield  # pylint: disable=unreachable
    monkeypatch.setattr(prepare, "_parts", broken)
    with pytest.raises(DataError, match="impression x: broken row"):
        prepare.prepare(micro(), str(tmp_path / "out"))
    assert not list(tmp_path.iterdir())


def test_sorted_strings_merge_in_python_string_order(monkeypatch):
    """prepare's compact set of training users: batches merged as it grows, decoded in
    the order sorted() gives (UTF-8 byte order is code point order)."""
    strings = [f"u{i:03d}" for i in range(300)] + ["é", "z", "Ω", "a b", "😀", "ÿ"]
    monkeypatch.setattr(prepare._SortedStrings, "MERGE_AT", 10)
    collected = prepare._SortedStrings()
    for start in range(0, len(strings), 7):
        collected.add(prepare._SortedStrings.encode(set(strings[start:start + 7] + ["z"])))
        assert collected._pending_size <= max(10, len(collected._merged))  # merged as it goes
    assert len(collected) == len(strings)
    assert [s for chunk in collected.decoded_chunks(size=16) for s in chunk] == sorted(strings)
