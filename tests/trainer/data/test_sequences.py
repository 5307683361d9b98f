"""trainer/data/sequences.py: the sequential-benchmark files (RecBole atomic files) on a
tiny fixture written here, and a clear error for each kind of bad file."""

import os

import pytest

from tests.harness import SEQ_ITEMS, TINY_CONFIG, write_sequence_fixture
from trainer import config as config_lib
from trainer.config import SequencesConfig
from trainer.data import sequences, sources
from trainer.data.canonical import DataError

ITEMS = ["A1", "B2", "C3", "D4", "E5", "F6", "G7", "H8"]
USERS = ["u-x", "u-y"]
# user 0: 0 1 2 3 4 (valid target 3, test target 4); user 1: 5 6 7 2 (valid 7, test 2)
TRAIN = [(0, [0], 1), (0, [0, 1], 2), (1, [5], 6)]
VALID = [(0, [0, 1, 2], 3), (1, [5, 6], 7)]
TEST = [(0, [0, 1, 2, 3], 4), (1, [5, 6, 7], 2)]


def _inter(rows):
    lines = ["user_id:token\titem_id_list:token_seq\titem_id:token"]
    lines += [f"{u}\t{' '.join(map(str, h))}\t{t}" for u, h, t in rows]
    return "\n".join(lines) + "\n"


def write_fixture(directory, name="Tiny", **replace):
    """The benchmark files of a tiny dataset; ``replace`` maps a suffix to other text."""
    files = {
        "train.inter": _inter(TRAIN), "valid.inter": _inter(VALID),
        "test.inter": _inter(TEST),
        "item2index": "".join(f"{item}\t{i}\n" for i, item in enumerate(ITEMS)),
        "user2index": "".join(f"{user}\t{i}\n" for i, user in enumerate(USERS)),
        "text": "item_id:token\ttext:token_seq\n" + "".join(
            f"{item}\tTitle {item}. Category. Brand {i % 2}. \n"
            for i, item in enumerate(ITEMS) if item != "H8") + "Z9\tnot indexed\n",
    }
    files.update(replace)
    os.makedirs(directory, exist_ok=True)
    for suffix, text in files.items():
        if text is not None:
            with open(os.path.join(directory, f"{name}.{suffix}"), "w", encoding="utf-8") as f:
                f.write(text)
    return str(directory)


def test_the_files_load_as_impressions(tmp_path):
    data_dir = write_fixture(tmp_path)
    data = sequences.load(data_dir, SequencesConfig(negatives_per_positive=2, eval_negatives=3))
    assert data.info["name"] == "Tiny"
    assert data.info["rows"] == {"train": 3, "validation": 2, "test": 2}
    assert data.info["items"] == 8 and data.info["users"] == 2
    assert data.info["items_without_text"] == 1  # H8 has no .text row
    assert data.info["text_rows_of_unknown_items"] == 1  # Z9 is not indexed
    assert data.catalogue["A1"].title == "Title A1. Category. Brand 0."
    assert data.catalogue["H8"].title == ""

    test = data.splits["test"]
    positives = [ex for ex in test if ex.label == 1]
    assert [(ex.user_id, ex.history, ex.candidate) for ex in positives] == [
        ("u-x", ("A1", "B2", "C3", "D4"), "E5"), ("u-y", ("F6", "G7", "H8"), "C3")]
    assert {ex.impression_id for ex in test} == {"u-x-test", "u-y-test"}
    train_ids = sorted({ex.impression_id for ex in data.splits["train"]})
    assert train_ids == ["u-x-train-0", "u-x-train-1", "u-y-train-0"]

    # Negatives: as many as asked when the catalogue allows, never an item of the user's rows.
    user_items = {"u-x": {"A1", "B2", "C3", "D4", "E5"}, "u-y": {"F6", "G7", "H8", "C3"}}
    for split, wanted in (("train", 2), ("validation", 3), ("test", 3)):
        by_impression = {}
        for ex in data.splits[split]:
            by_impression.setdefault(ex.impression_id, []).append(ex)
        for examples in by_impression.values():
            negatives = [ex.candidate for ex in examples if ex.label == 0]
            assert sum(ex.label for ex in examples) == 1
            assert not set(negatives) & user_items[examples[0].user_id]
            assert len(negatives) == min(wanted, 8 - len(user_items[examples[0].user_id]))

    # Seeded: the same negatives again; another seed, others somewhere.
    again = sequences.load(data_dir, SequencesConfig(negatives_per_positive=2, eval_negatives=3))
    assert again.splits == data.splits
    other = sequences.load(data_dir, SequencesConfig(negatives_per_positive=2, eval_negatives=3,
                                                     seed=99))
    assert other.splits != data.splits


def test_the_source_loads_through_the_config_and_finds_the_prefix(tmp_path):
    data_dir = write_fixture(tmp_path / "bench", name="Scientific")
    cfg = config_lib.load_config(TINY_CONFIG, ["data.source=sequences",
                                               f"data.data_dir={data_dir}",
                                               "data.sequences.eval_negatives=2"])
    data = sources.load(cfg.data, str(tmp_path / "unused"))
    assert data.info["name"] == "Scientific" and data.info["source"] == "sequences"
    assert not (tmp_path / "unused").exists()  # reading writes nothing
    assert sorted(os.listdir(data_dir)) == sorted(
        f"Scientific.{s}" for s in ("train.inter", "valid.inter", "test.inter", "item2index",
                                    "user2index", "text"))


def test_without_a_user_index_users_keep_their_indices(tmp_path):
    data = sequences.load(write_fixture(tmp_path, user2index=None), SequencesConfig())
    assert {ex.user_id for ex in data.splits["test"]} == {"0", "1"}


BAD_FILES = [
    # (suffix, text, expected message pieces)
    ("valid.inter", None, ["Tiny.valid.inter: file not found"]),
    ("train.inter", None, ["expected exactly one *.train.inter file, found none"]),
    ("test.inter", "user_id:token\titem_id:token\n0\t1\n", ["Tiny.test.inter:1", "item_id_list"]),
    ("valid.inter", "", ["Tiny.valid.inter: file is empty"]),
    ("valid.inter", "user_id:token\titem_id_list:token_seq\titem_id:token\n",
     ["Tiny.valid.inter: no rows"]),
    ("test.inter", _inter(TEST) + "0\t1 2\n", ["Tiny.test.inter:4", "expected 3"]),
    ("test.inter", _inter(TEST) + "0\t1 x\t2\n", ["Tiny.test.inter:4", "'x'", "not an integer"]),
    ("train.inter", _inter(TRAIN) + "1\t1 2\t8\n", ["Tiny.train.inter:5", "item_id 8",
                                                     "out of range", "0 to 7"]),
    ("train.inter", _inter(TRAIN) + "2\t1\t3\n", ["Tiny.train.inter:5", "user_id 2"]),
    ("item2index", "A1\t0\nB2\t0\n", ["Tiny.item2index:2", "index 0 is given twice"]),
    ("item2index", "A1\t0\nA1\t1\n", ["Tiny.item2index:2", "'A1' is listed twice"]),
    ("item2index", "A1\t0\nB2\t2\n", ["Tiny.item2index", "1 is missing"]),
    ("item2index", "A1 0\n", ["Tiny.item2index:1", "2 tab-separated fields"]),
    ("text", "item_id:token\ttext:token_seq\nA1\tone\nA1\ttwo\n",
     ["Tiny.text:3", "'A1' has a second text row"]),
    ("text", "id\ttext\nA1\tone\n", ["Tiny.text:1", "item_id"]),
]


@pytest.mark.parametrize("suffix, text, pieces", BAD_FILES,
                         ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(BAD_FILES)])
def test_bad_files_name_the_file_and_line(tmp_path, suffix, text, pieces):
    data_dir = write_fixture(tmp_path, **{suffix: text})
    before = sorted(os.listdir(data_dir))
    with pytest.raises(DataError) as err:
        sequences.load(data_dir, SequencesConfig())
    for piece in pieces:
        assert piece in str(err.value), (piece, str(err.value))
    assert sorted(os.listdir(data_dir)) == before


def test_the_prefix_must_be_unambiguous(tmp_path):
    write_fixture(tmp_path, name="One")
    write_fixture(tmp_path, name="Two")
    with pytest.raises(DataError, match="found One, Two; set data.sequences.name"):
        sequences.load(str(tmp_path), SequencesConfig())
    assert sequences.load(str(tmp_path), SequencesConfig(name="Two")).info["name"] == "Two"
    with pytest.raises(DataError, match="directory not found"):
        sequences.load(str(tmp_path / "nowhere"), SequencesConfig())


def test_negative_counts_are_checked():
    with pytest.raises(DataError, match="data.sequences.negatives_per_positive"):
        sequences.load("unused", SequencesConfig(eval_negatives=-1))


def test_cold_start_items_never_reach_a_training_row(tmp_path):
    data_dir = write_sequence_fixture(tmp_path / "seq")
    cfg = SequencesConfig(negatives_per_positive=3, eval_negatives=4, cold_start_items=0.2)
    data = sequences.load(data_dir, cfg)
    cold = set(data.info["cold_start"]["items"])
    assert len(cold) == round(0.2 * SEQ_ITEMS)
    for ex in data.splits["train"]:  # not a target, a negative, nor in a history
        assert ex.candidate not in cold and not cold & set(ex.history)
    plain = sequences.load(data_dir, SequencesConfig(negatives_per_positive=3,
                                                     eval_negatives=4))
    assert "cold_start" not in plain.info
    # Validation and test keep every row; the dropped training rows are counted.
    for split in ("validation", "test"):
        assert len(data.splits[split]) == len(plain.splits[split])
    dropped = data.info["cold_start"]["train_rows_dropped"]
    positives = [ex for ex in plain.splits["train"] if ex.label == 1]
    assert dropped == sum(ex.candidate in cold for ex in positives) > 0
    assert data.info["cold_start"]["test_targets"] == sum(
        ex.candidate in cold for ex in plain.splits["test"] if ex.label == 1)
    # Seeded: the same seed holds out the same items, another seed others.
    again = sequences.load(data_dir, cfg)
    assert set(again.info["cold_start"]["items"]) == cold
    other = sequences.load(data_dir, SequencesConfig(cold_start_items=0.2, seed=14))
    assert set(other.info["cold_start"]["items"]) != cold


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_a_cold_start_share_outside_0_1_is_refused(tmp_path, share):
    with pytest.raises(DataError, match="cold_start_items"):
        sequences.load(write_fixture(tmp_path), SequencesConfig(cold_start_items=share))
