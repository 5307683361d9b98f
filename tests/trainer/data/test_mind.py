"""Tests for the MIND loader on a tiny MIND-format fixture written into tmp_path."""

import json
import os

import pytest

from trainer.config import ConfigError, MindConfig
from trainer.data import mind
from trainer.data.canonical import DataError

T0 = 1573776000  # 2019-11-15 00:00:00 UTC

NEWS_TRAIN = [
    "N1\tnews\tworld\tSummit opens\tLeaders meet.\thttp://x/1\t[]\t[]",
    "N2\tsports\tnfl\tBig win\tA big win.\thttp://x/2\t\t",
    "N3\tnews\tpolitics\tVote today\t\thttp://x/3\t\t",
    "N4\tfinance\tmarkets\tStocks rise\tMarkets up.\thttp://x/4\t\t",
    "N5\tsports\tnba\tLate shot\tBuzzer.\thttp://x/5\t\t",
    "N6\tlifestyle\tfood\tBest soup\tRecipe.\thttp://x/6\t\t",
]
NEWS_DEV = [
    "N1\tnews\tworld\tSummit opens\tLeaders meet.\thttp://x/1\t[]\t[]",  # also in train
    "N7\tweather\tstorms\tStorm nears\tRain.\thttp://x/7\t\t",
    "N8\tautos\tcars\tNew car\tFast.\thttp://x/8\t\t",
]
# N99 (history) and N98 (candidate) are in no news.tsv.
BEHAVIORS_TRAIN = [
    "1\tU1\t11/15/2019 8:55:22 AM\tN1 N2 N99\tN3-1 N4-0 N5-0",
    "2\tU2\t11/15/2019 12:30:00 PM\t\tN1-0 N6-1",
    "3\tU1\t11/15/2019 9:00:00 AM\tN1 N2 N99\tN98-1 N4-0",
    "4\tU3\t11/15/2019 1:00:00 PM\tN2 N3\tN5-0 N6-0",
    "5\tU4\t11/15/2019 2:00:00 PM\tN6\tN1-1 N2-0 N3-0",
    "6\tU5\t11/15/2019 3:00:00 PM\tN4 N5\tN2-1 N3-0",
]
BEHAVIORS_DEV = [
    "1\tU1\t11/16/2019 8:00:00 AM\tN1 N2\tN7-1 N8-0 N1-0",
    "2\tU6\t11/16/2019 9:00:00 AM\t\tN8-1 N7-0",
]
TRAIN_EXAMPLES = 3 + 2 + 1 + 2 + 3 + 2  # N98 dropped from impression 3


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else line.encode("utf-8"))
            f.write(b"\n")
    return str(path)


def write_mind(root, train=None, dev=None, news_train=None, news_dev=None, extra=None):
    """Writes a MIND-layout fixture (train/ and dev/) under ``root``; returns its path."""
    _write(os.path.join(root, "train", "behaviors.tsv"), train or BEHAVIORS_TRAIN)
    _write(os.path.join(root, "train", "news.tsv"), news_train or NEWS_TRAIN)
    _write(os.path.join(root, "dev", "behaviors.tsv"), dev or BEHAVIORS_DEV)
    _write(os.path.join(root, "dev", "news.tsv"), news_dev or NEWS_DEV)
    for subdir, (behaviors, news) in (extra or {}).items():
        _write(os.path.join(root, subdir, "behaviors.tsv"), behaviors)
        _write(os.path.join(root, subdir, "news.tsv"), news)
    return str(root)


def _cfg(**kwargs):
    kwargs.setdefault("validation_fraction", 0.34)  # 2 of the 6 train impressions
    return MindConfig(**kwargs)


def _groups(examples):
    groups = {}
    for ex in examples:
        groups.setdefault(ex.impression_id, []).append(ex)
    return groups


@pytest.fixture(name="data")
def _data(tmp_path):
    return mind.load(write_mind(tmp_path), _cfg())


def test_examples_per_split_and_info_counts(data):
    train, val, test = (data.splits[s] for s in ("train", "validation", "test"))
    assert len(_groups(train)) == 4 and len(_groups(val)) == 2
    assert len(train) + len(val) == TRAIN_EXAMPLES
    assert len(test) == 5 and len(_groups(test)) == 2
    assert {ex.split for ex in train} == {"train"}
    assert {ex.split for ex in val} == {"validation"}
    assert {ex.split for ex in test} == {"test"}
    info = data.info
    assert info["impressions"] == {"train": 4, "validation": 2, "test": 2}
    assert info["examples"]["test"] == 5
    assert info["examples"]["train"] + info["examples"]["validation"] == TRAIN_EXAMPLES
    assert info["news"] == 8
    assert info["users"] == 6  # U1..U6
    assert info["split_dirs"]["test"] == "dev"
    assert info["split_dirs"]["validation"].startswith("train")
    assert any("official test set has no labels" in n for n in info["notes"])
    assert json.loads(json.dumps(info)) == info  # train writes it as data_info.json


def test_grouping_labels_and_order(data):
    test = _groups(data.splits["test"])
    assert list(test) == ["dev-1", "dev-2"]
    assert [(ex.candidate, ex.label) for ex in test["dev-1"]] == [
        ("N7", 1), ("N8", 0), ("N1", 0)]
    assert [(ex.candidate, ex.label) for ex in test["dev-2"]] == [("N8", 1), ("N7", 0)]
    assert {ex.user_id for ex in test["dev-1"]} == {"U1"}
    everything = _groups(data.splits["train"] + data.splits["validation"])
    assert sorted(everything) == [f"train-{i}" for i in range(1, 7)]
    assert [(ex.candidate, ex.label) for ex in everything["train-1"]] == [
        ("N3", 1), ("N4", 0), ("N5", 0)]
    assert [(ex.candidate, ex.label) for ex in everything["train-5"]] == [
        ("N1", 1), ("N2", 0), ("N3", 0)]


def test_history_order_and_missing_ids_removed(data):
    everything = _groups(data.splits["train"] + data.splits["validation"])
    assert everything["train-1"][0].history == ("N1", "N2")  # oldest first, N99 removed
    assert everything["train-4"][0].history == ("N2", "N3")
    assert everything["train-2"][0].history == ()
    assert _groups(data.splits["test"])["dev-1"][0].history == ("N1", "N2")
    assert all(isinstance(ex.history, tuple) for ex in data.splits["train"])


def test_missing_news_counted_never_silent(data):
    missing = data.info["missing_news"]
    assert missing["history"] == 2  # N99 in impressions 1 and 3
    assert missing["candidate"] == 1  # N98 in impression 3
    assert missing["unique_ids"] == 2
    assert missing["sample_ids"] == ["N98", "N99"]
    everything = _groups(data.splits["train"] + data.splits["validation"])
    assert [ex.candidate for ex in everything["train-3"]] == ["N4"]
    # Impression 3 (only N4-0 left) and 4 (no click) have a single class: kept, counted.
    single = data.info["single_class_impressions"]
    assert single["train"] + single["validation"] == 2
    assert single["test"] == 0


def test_catalogue_is_union_with_provider_and_fields(tmp_path):
    data = mind.load(write_mind(tmp_path), _cfg())
    assert sorted(data.catalogue) == [f"N{i}" for i in range(1, 9)]
    item = data.catalogue["N2"]
    assert item.provider == "sports"
    assert item.fields == {"title": "Big win", "category": "sports", "subcategory": "nfl"}
    data = mind.load(str(tmp_path), _cfg(text_fields=["abstract"]))
    assert data.catalogue["N1"].fields == {"title": "Summit opens", "abstract": "Leaders meet."}
    assert data.info["text_fields"] == ["title", "abstract"]


def test_crlf_line_endings_and_bom_are_accepted(tmp_path):
    crlf = [line + "\r" for line in BEHAVIORS_TRAIN]
    crlf[0] = "\ufeff" + crlf[0]
    data = mind.load(write_mind(tmp_path, train=crlf), _cfg())
    assert data.info["examples"]["train"] + data.info["examples"]["validation"] == \
        TRAIN_EXAMPLES
    everything = _groups(data.splits["train"] + data.splits["validation"])
    assert everything["train-1"][-1].candidate == "N5"


def test_time_parsing():
    assert mind.parse_time("11/15/2019 8:55:22 AM") == T0 + 8 * 3600 + 55 * 60 + 22
    assert mind.parse_time("11/15/2019 12:30:00 PM") == T0 + 12 * 3600 + 30 * 60
    assert mind.parse_time("11/15/2019 12:05:01 AM") == T0 + 5 * 60 + 1
    assert mind.parse_time("11/15/2019 11:59:59 PM") == T0 + 86399


def test_example_timestamps(data):
    everything = _groups(data.splits["train"] + data.splits["validation"])
    assert {ex.timestamp for ex in everything["train-1"]} == {T0 + 32122}
    assert everything["train-2"][0].timestamp == T0 + 45000
    assert _groups(data.splits["test"])["dev-2"][0].timestamp == T0 + 86400 + 9 * 3600


def test_validation_split_is_seeded_and_by_impression(tmp_path):
    root = write_mind(tmp_path)

    def val_ids(seed):
        data = mind.load(root, _cfg(seed=seed))
        val = set(_groups(data.splits["validation"]))
        train = set(_groups(data.splits["train"]))
        assert not val & train
        assert val | train == {f"train-{i}" for i in range(1, 7)}
        return val

    assert val_ids(3) == val_ids(3)
    assert len({frozenset(val_ids(seed)) for seed in range(6)}) > 1
    no_val = mind.load(root, _cfg(validation_fraction=0.0))
    assert no_val.splits["validation"] == []
    assert no_val.info["impressions"]["train"] == 6


def test_max_train_impressions_is_seeded_and_recorded(tmp_path):
    root = write_mind(tmp_path)
    full = mind.load(root, _cfg())
    capped = mind.load(root, _cfg(max_train_impressions=2))
    assert capped.info["impressions"]["train"] == 2
    assert capped.info["train_impressions_before_cap"] == 4
    assert capped.info["max_train_impressions"] == 2
    assert set(_groups(capped.splits["train"])) <= set(_groups(full.splits["train"]))
    # Validation is carved out before the cap, so it does not move.
    assert _groups(capped.splits["validation"]).keys() == _groups(
        full.splits["validation"]).keys()
    again = mind.load(root, _cfg(max_train_impressions=2))
    assert _groups(again.splits["train"]).keys() == _groups(capped.splits["train"]).keys()


def test_labelled_test_subdir_becomes_test_and_dev_validation(tmp_path):
    root = write_mind(tmp_path, extra={"test": (
        ["9\tU9\t11/17/2019 8:00:00 AM\tN7\tN8-1 N1-0"],
        ["N1\tnews\tworld\tSummit opens\t\t\t\t"])})
    data = mind.load(root, _cfg(test_subdir="test"))
    assert list(_groups(data.splits["test"])) == ["test-9"]
    assert list(_groups(data.splits["validation"])) == ["dev-1", "dev-2"]
    assert data.info["impressions"]["train"] == 6
    assert data.info["split_dirs"] == {"train": "train", "validation": "dev", "test": "test"}


def test_unlabelled_test_subdir_is_skipped_with_a_note(tmp_path):
    root = write_mind(tmp_path, extra={"test": (
        ["9\tU9\t11/17/2019 8:00:00 AM\tN7\tN8 N1"], ["N9\tnews\tworld\tOther\t\t\t\t"])})
    data = mind.load(root, _cfg(test_subdir="test"))
    assert list(_groups(data.splits["test"])) == ["dev-1", "dev-2"]
    assert "N9" not in data.catalogue
    assert any("no click labels" in n for n in data.info["notes"])


def _replace(lines, index, new):
    lines = list(lines)
    lines[index] = new
    return lines


@pytest.mark.parametrize("where, kwargs, line, message", [
    ("train/behaviors.tsv",
     {"train": _replace(BEHAVIORS_TRAIN, 1, "2\tU2\t11/15/2019 12:30:00 PM\tN1-0 N6-1")},
     2, "expected 5 tab-separated columns"),
    ("train/news.tsv", {"news_train": _replace(NEWS_TRAIN, 2, "N3\tnews\tpolitics\tVote")},
     3, "expected 8 tab-separated columns"),
    ("train/behaviors.tsv",
     {"train": _replace(BEHAVIORS_TRAIN, 3, "4\tU3\t11/15/2019 1:00:00 PM\tN2\tN1-x N6-0")},
     4, "malformed impression token 'N1-x'"),
    ("dev/behaviors.tsv",
     {"dev": _replace(BEHAVIORS_DEV, 1, "2\tU6\t11/16/2019 9:00:00 AM\t\tN8-2 N7-0")},
     2, "outside {0, 1}"),
    ("dev/news.tsv",
     {"news_dev": _replace(NEWS_DEV, 1, b"N7\tweather\tstorms\tStorm \xff\t\t\t\t")},
     2, "not valid UTF-8"),
    ("train/behaviors.tsv",
     {"train": _replace(BEHAVIORS_TRAIN, 4, "5\tU4\t2019-11-15 14:00\tN6\tN1-1 N2-0")},
     5, "is not like '11/15/2019 8:55:22 AM'"),
    ("train/behaviors.tsv",
     {"train": _replace(BEHAVIORS_TRAIN, 0, "1\tU1\t11/15/2019 8:55:22 AM\tN1\tN3 N4")},
     1, "no click labels"),
    ("train/behaviors.tsv",
     {"train": _replace(BEHAVIORS_TRAIN, 5, "1\tU5\t11/15/2019 3:00:00 PM\tN4\tN2-1")},
     6, "duplicate impression_id '1'"),
])
def test_bad_input_names_file_and_line(tmp_path, where, kwargs, line, message):
    root = write_mind(tmp_path, **kwargs)
    with pytest.raises(DataError) as err:
        mind.load(root, _cfg())
    text = str(err.value)
    assert f"{os.path.join(root, where)}:{line}:" in text
    assert message in text


def test_missing_file_says_what_to_do(tmp_path):
    root = write_mind(tmp_path)
    os.remove(os.path.join(root, "dev", "news.tsv"))
    with pytest.raises(DataError, match=r"dev/news.tsv: file not found; .*dev_subdir"):
        mind.load(root, _cfg())
    with pytest.raises(DataError, match="data directory not found"):
        mind.load(os.path.join(root, "nope"), _cfg())


def test_bad_config_values(tmp_path):
    root = write_mind(tmp_path)
    with pytest.raises(ConfigError, match="text_fields"):
        mind.load(root, _cfg(text_fields=["title", "body"]))
    with pytest.raises(ConfigError, match="validation_fraction"):
        mind.load(root, _cfg(validation_fraction=1.0))
