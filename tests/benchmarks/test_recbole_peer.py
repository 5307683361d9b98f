"""benchmarks/recbole_peer.py without RecBole: the split written (and linked) as RecBole
benchmark files, the runner's command and process handling (a fake runner), and the
read-back of a score matrix into the benchmark's metrics, checked against hand-computed
values."""

import collections
import json
import math
import os
import sys

import numpy as np
import pytest

from benchmarks import peer_env, quality, recbole_peer

Ex = collections.namedtuple("Ex", "user_id history candidate label")
# Catalogue: item id -> column (IdVocabulary.items: sorted ids -> 1..N).
COLUMNS = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _splits():
    """Three users; training positives with their histories (and a negative each, which
    is not written), one validation and one test positive per user."""
    return {
        "train": [Ex("u1", (), "a", 1), Ex("u1", (), "f", 0),
                  Ex("u1", ("a",), "b", 1), Ex("u1", ("a",), "e", 0),
                  Ex("u1", ("a", "b"), "c", 1),
                  Ex("u2", (), "d", 1), Ex("u2", ("d",), "e", 1),
                  Ex("u3", (), "b", 1)],
        "validation": [Ex("u1", ("a", "b", "c"), "d", 1), Ex("u1", ("a", "b", "c"), "f", 0),
                       Ex("u2", ("d", "e"), "a", 1), Ex("u3", ("b",), "c", 1)],
        "test": [Ex("u1", ("a", "b", "c", "d"), "e", 1), Ex("u1", ("a", "b", "c", "d"), "f", 0),
                 Ex("u2", ("d", "e", "a"), "f", 1), Ex("u3", ("b", "c"), "a", 1)],
    }


def test_write_split_writes_our_positives_as_benchmark_files(tmp_path):
    # The benchmark scores u2 then u1 (its order); u3 is not scored, so not in the test file.
    info = recbole_peer.write_split(str(tmp_path), "ml", _splits(), COLUMNS, ["u2", "u1"],
                                    [6, 5], max_history=3)
    folder = tmp_path / "ml"
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    # Tokens: items are their columns, users their rank (u1 -> 0, u2 -> 1, u3 -> 2). Each
    # training positive is a row (the prefix -> the next item), none without history.
    assert _read(folder / "ml.train.inter") == header + "0\t1\t2\n0\t1 2\t3\n1\t4\t5\n"
    # Histories longer than MAX_ITEM_LIST_LENGTH (3 here) keep the most recent items.
    assert _read(folder / "ml.valid.inter") == header + "0\t1 2 3\t4\n1\t4 5\t1\n2\t2\t3\n"
    assert _read(folder / "ml.test.inter") == header + "1\t4 5 1\t6\n0\t2 3 4\t5\n"
    assert _read(folder / "ml.item") == "item_id:token\n1\n2\n3\n4\n5\n6\n"
    assert info["mode"] == "written"
    assert info["item_tokens"] == ["1", "2", "3", "4", "5", "6"]
    assert info["test_users"] == ["1", "0"] and info["test_targets"] == ["6", "5"]
    assert info["rows"] == {"train": 3, "valid": 3, "test": 2}
    assert info["rows_without_history"] == {"train": 3, "valid": 0, "test": 0}
    assert info["histories_truncated"] == 1 and info["test_users_without_history"] == 0
    assert json.loads(_read(tmp_path / "split.json")) == info
    with pytest.raises(ValueError, match="not the benchmark's"):
        recbole_peer.write_split(str(tmp_path), "ml", _splits(), COLUMNS, ["u2"], [5])


def _write_sequence_files(folder):
    """Files as UniSRec releases them: 0-based indices, item2index / user2index."""
    os.makedirs(folder, exist_ok=True)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    files = {"S.item2index": "f\t0\ne\t1\nd\t2\nc\t3\nb\t4\na\t5\n",
             "S.user2index": "ux\t0\nuy\t1\n",
             "S.train.inter": header + "0\t5\t4\n1\t2\t1\n",
             "S.valid.inter": header + "0\t5 4\t3\n1\t2 1\t0\n",
             "S.test.inter": header + "0\t5 4 3\t2\n1\t2 1 0\t5\n"}
    for name, text in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)


def test_write_split_links_sequence_files_as_they_are(tmp_path):
    source = tmp_path / "files"
    _write_sequence_files(source)
    # Our users "uy" then "ux"; their test items f (column 6) and d (column 4).
    info = recbole_peer.write_split(str(tmp_path / "out"), "S", {}, COLUMNS, ["uy", "ux"],
                                    [1, 4], sequences_dir=str(source))
    for part in ("train", "valid", "test"):
        link = tmp_path / "out" / "S" / f"S.{part}.inter"
        assert _read(link) == _read(source / f"S.{part}.inter")
        assert os.path.islink(link)
    # Column c is item COLUMNS^-1[c], whose token is its index in S.item2index.
    assert info["item_tokens"] == ["5", "4", "3", "2", "1", "0"]
    assert _read(tmp_path / "out" / "S" / "S.item") == "item_id:token\n5\n4\n3\n2\n1\n0\n"
    assert info["test_users"] == ["1", "0"] and info["test_targets"] == ["5", "2"]
    assert info["mode"] == "linked" and info["rows"] == {"train": 2, "valid": 2, "test": 2}
    with pytest.raises(ValueError, match="target"):
        recbole_peer.write_split(str(tmp_path / "bad"), "S", {}, COLUMNS, ["uy"], [2],
                                 sequences_dir=str(source))


# --- read-back ----------------------------------------------------------------------------

NEG = -np.inf
SCORES = np.array([[NEG, 0.9, 0.5, 0.7, 0.1, 0.3],
                   [NEG, 0.2, 0.2, 0.8, 0.4, 0.1],
                   [NEG, 0.5, 0.4, 0.3, 0.2, 0.6]], dtype=np.float32)
POSITIVE = np.array([3, 2, 4])
GROUPS = np.array([10, 11, 12])
# The sampled candidates, impressions interleaved: (group, item column, label).
SAMPLED = [(11, 1, 0), (10, 2, 0), (12, 4, 1), (10, 3, 1), (11, 2, 1), (12, 3, 0),
           (10, 4, 0), (11, 5, 0), (12, 5, 0)]


def _result():
    """A result.json as the runner writes it (the fields the read-back uses)."""
    chosen = {"learning_rate": 0.001, "best_valid_ndcg@10": 0.5,
              "best_valid_result": {"ndcg@10": 0.5},
              "test_result": {"recall@10": 1.0, "ndcg@10": 0.6, "recall@50": 1.0,
                              "ndcg@50": 0.6},
              "epochs_run": 12, "best_epoch": 2,
              "seconds": {"total": 30.0, "to_best_epoch": 5.0, "per_epoch": 2.5,
                          "per_epoch_train": 2.0},
              "train_rows": 100, "validation_curve": [[2.5, 0.3], [5.0, 0.5], [7.5, 0.4]],
              "score_seconds": 0.5, "recbole_test_rows": 3, "users_without_scores": [],
              "parameters": 1000}
    return {"model": "SASRec", "recbole": "1.2.1", "torch": "2.13.0+cpu", "threads": 2,
            "learning_rates": [0.001], "chosen_learning_rate": 0.001, "chosen": chosen,
            "runs": [dict(chosen)], "seconds_total": 31.0, "settings": {"epochs": 300}}


def test_scores_read_back_into_the_benchmarks_metrics(tmp_path):
    split = {"test_users": ["0", "1", "2"], "item_tokens": ["1", "2", "3", "4", "5"]}
    np.save(tmp_path / "scores.npy", SCORES)  # as the runner writes it
    scores = recbole_peer.read_scores(str(tmp_path), split)
    # MovieLens-style exclusions: column 0 always; user 0 rated item 1, user 2 item 2.
    exclude = np.zeros(SCORES.shape, dtype=bool)
    exclude[:, 0] = True
    exclude[0, 1] = exclude[2, 2] = True
    groups, items, labels = (np.array(v) for v in zip(*SAMPLED))
    row, sampled, full = recbole_peer.benchmark_row(
        "recbole_sasrec", scores, _result(), positive=POSITIVE, exclude=exclude,
        groups=GROUPS, sampled_items=items, sampled_labels=labels, sampled_groups=groups,
        bootstrap=50, seed=0)
    # Full ranking, ties against the positive: user 0's 0.7 beats every candidate (0.9 is
    # excluded): rank 1; user 1's 0.2 ties item 1 and trails 0.8 and 0.4: rank 4; user
    # 2's 0.2 trails 0.5, 0.3, 0.6 (0.4 is excluded): rank 4.
    assert full["mrr"].tolist() == [1.0, 0.25, 0.25]
    fr = row["full_ranking"]
    assert fr["ndcg@10"] == pytest.approx((1 + 2 / math.log2(5)) / 3)
    assert fr["mrr"] == pytest.approx(0.5) and fr["hr@10"] == 1.0
    assert fr["candidates_per_user"] == {"min": 3, "mean": 3.3, "max": 4}
    assert fr["users_evaluated"] == 3 and not fr["users_subset"] and not fr["pairwise"]
    # Sampled: user 0 ranks 1st of (0.7, 0.5, 0.1), user 1 2nd of (0.2, 0.2 tie, 0.1),
    # user 2 3rd of (0.2, 0.3, 0.6).
    assert sampled["mrr"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert row["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 0.5) / 3)
    assert row["candidates_per_user"] == 3
    # The same numbers as the benchmark's own code computes for these scores.
    ours = quality.summarize({"ndcg@10": full["ndcg@10"], "mrr": full["mrr"]},
                             np.arange(3), 50, 0, ("ndcg@10", "mrr"))
    assert fr["ci95"]["ndcg@10"] == ours["ci95"]["ndcg@10"]
    # RecBole's own figures pass through; ours under its protocol (only column 0 masked):
    # user 0 then ranks 2nd (0.9 counts), user 2 5th (0.4 counts too).
    reported = row["recbole_reported"]
    assert reported["test"]["ndcg@10"] == 0.6 and reported["test_rows"] == 3
    assert reported["ours_unmasked"]["ndcg@10"] == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5) + 1 / math.log2(6)) / 3)
    assert row["settings"]["learning_rate"] == 0.001 and row["train_seconds"] == 30.0
    ttq = row["time_to_quality"]  # from the runner's validation curve
    assert (ttq["best_epoch"], ttq["seconds_to_best_epoch"]) == (2, 5.0)
    assert ttq["seconds_per_epoch"] == 2.5 and ttq["train_examples_per_s"] == 50.0
    assert ttq["curve"] == [[2.5, 0.3], [5.0, 0.5], [7.5, 0.4]]
    json.dumps(row)  # quality.json holds it
    with pytest.raises(recbole_peer.RecBoleError, match="shape"):
        recbole_peer.read_scores(str(tmp_path), {**split, "test_users": ["0"]})


FAKE_RUNNER = """
import argparse, json, os, sys
import numpy as np
p = argparse.ArgumentParser()
for name in ("data_dir", "model", "out", "learning_rates", "epochs", "threads", "seed"):
    p.add_argument("--" + name)
a = p.parse_args()
if a.model == "GRU4Rec":
    print("something went wrong", file=sys.stderr)
    sys.exit(1)
print("recbole_runner: " + a.model + " lr " + a.learning_rates + " epochs " + a.epochs)
np.save(os.path.join(a.out, "scores.npy"), np.zeros([1, 2], np.float32))
json.dump({"model": a.model, "data_dir": a.data_dir}, open(os.path.join(a.out, "result.json"), "w"))
"""


def test_run_peer_runs_the_runner_and_reports_failures(tmp_path):
    script = tmp_path / "fake_runner.py"
    script.write_text(FAKE_RUNNER)
    lines = []
    result = recbole_peer.run_peer(sys.executable, "recbole_sasrec", str(tmp_path / "data"),
                                   str(tmp_path / "sas"), lines.append,
                                   learning_rates=[0.001, 0.003], epochs=2,
                                   script=str(script))
    assert result == {"model": "SASRec", "data_dir": str(tmp_path / "data")}
    assert lines == ["   recbole_sasrec: SASRec lr 0.001,0.003 epochs 2"]
    assert "recbole_runner:" in _read(tmp_path / "sas" / "runner.log")
    with pytest.raises(recbole_peer.RecBoleError, match="something went wrong"):
        recbole_peer.run_peer(sys.executable, "recbole_gru4rec", str(tmp_path / "data"),
                              str(tmp_path / "gru"), lines.append, script=str(script))
    command = recbole_peer.runner_command("py", "SASRec", "d", "o")
    assert command[:3] == ["py", "-I", "-u"] and command[3] == recbole_peer.RUNNER_SCRIPT
    assert command[command.index("--learning_rates") + 1] == "0.0003,0.001,0.003"


def test_ensure_env_error_names_the_path(monkeypatch):
    calls = {}

    def failing(path, **kwargs):
        calls.update(kwargs, path=path)
        raise RuntimeError("installing the peer failed (exit 1): pip install ...")

    monkeypatch.setattr(peer_env, "ensure_peer_env", failing)
    with pytest.raises(recbole_peer.RecBoleError, match="/nowhere/venv.*installing the peer"):
        recbole_peer.ensure_env("/nowhere/venv", log=lambda *_: None)
    assert calls["requirements"] == recbole_peer.REQUIREMENTS
    assert "recbole==1.2.1" in calls["requirements"] and calls["check_code"]


def test_recbole_flags_are_checked():
    args = quality._parser().parse_args(["--data_dir", "d", "--out", "o",
                                         "--recbole_learning_rates", "1e-3, 0.003"])
    quality._check_recbole(args)
    assert args.recbole_learning_rates == "0.001,0.003"
    assert args.recbole_venv == recbole_peer.DEFAULT_VENV
    args.recbole_learning_rates = "fast"
    with pytest.raises(quality._Usage):
        quality._check_recbole(args)


def test_writing_over_a_linked_split_leaves_the_source_files_alone(tmp_path):
    source = tmp_path / "files"
    _write_sequence_files(source)
    before = _read(source / "S.train.inter")
    recbole_peer.write_split(str(tmp_path / "out"), "S", {}, COLUMNS, ["uy"], [1],
                             sequences_dir=str(source))
    # The same directory, now written from examples (as with cold-start items).
    splits = {"train": [Ex("uy", ("a",), "b", 1)], "validation": [Ex("uy", ("a", "b"), "c", 1)],
              "test": [Ex("uy", ("a", "b", "c"), "f", 1)]}
    recbole_peer.write_split(str(tmp_path / "out"), "S", splits, COLUMNS, ["uy"], [6])
    assert _read(source / "S.train.inter") == before
    assert not os.path.islink(tmp_path / "out" / "S" / "S.train.inter")
