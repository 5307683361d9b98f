"""benchmarks/compare_scores.py: rows saved by a quality run compared offline (the
end-to-end agreement with the benchmark's own figures is checked in test_quality.py)."""

import json

import numpy as np
import pytest

from benchmarks import compare_scores, quality
from trainer.errors import UserInputError

USERS, ITEMS = 40, 12


def write_row(directory, name, logits, targets, excluded, users=None):
    directory.mkdir(exist_ok=True)
    users = np.array([f"u{i}" for i in range(USERS)]) if users is None else users
    np.savez(directory / f"{name}.npz", logits=logits.astype(np.float32), users=users,
             targets=targets, excluded=excluded)


@pytest.fixture
def split():
    rng = np.random.default_rng(0)
    targets = rng.integers(1, ITEMS + 1, USERS)
    excluded = np.zeros((USERS, ITEMS + 1), bool)
    excluded[:, 0] = True
    return rng, targets, excluded


def test_rows_ensembles_and_peer_scores_are_ranked_as_the_benchmark_ranks(tmp_path, split):
    rng, targets, excluded = split
    good = rng.normal(size=(USERS, ITEMS + 1))
    good[np.arange(USERS), targets] += 3.0  # the held-out item near the top
    noise = rng.normal(size=(USERS, ITEMS + 1))
    write_row(tmp_path / "scores", "good", good, targets, excluded)
    write_row(tmp_path / "scores", "noise", noise, targets, excluded)
    peer = -good
    peer[np.arange(USERS), targets] = -100.0  # a peer that ranks the target last
    np.save(tmp_path / "peer.npy", peer)
    out = tmp_path / "compare.json"
    assert compare_scores.main(["--scores", str(tmp_path / "scores"), "--row",
                                f"peer={tmp_path / 'peer.npy'}", "--ensemble", "good+noise",
                                "--against", "noise", "--bootstrap", "200",
                                "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert set(rows) == {"good", "noise", "peer", "good+noise"}
    assert rows["good"]["hr@10"] > rows["noise"]["hr@10"] > rows["peer"]["hr@10"]
    assert rows["peer"]["ndcg@10"] == 0.0  # every other item ranks above the target
    # The benchmark's ensemble rule: the mean of per-user standardized logits.
    fused = (quality.standardized(good, excluded) + quality.standardized(noise, excluded)) / 2
    expected = np.mean(np.sum(fused[:, 1:] >= fused[np.arange(USERS), targets][:, None], 1)
                       <= 10)
    assert rows["good+noise"]["hr@10"] == pytest.approx(expected)
    paired = rows["good"]["paired_difference"]["noise"]["ndcg@10"]
    assert paired["mean"] == pytest.approx(rows["good"]["ndcg@10"] - rows["noise"]["ndcg@10"])
    assert paired["ci95"][0] > 0  # separated
    assert "noise" not in rows["noise"]["paired_difference"]


@pytest.mark.parametrize("case, message", [
    ("other_targets", "held-out items or exclusions differ"),
    ("other_shape", "another split or catalogue"),
    ("no_npz", "no <row>.npz"),
    ("bad_row", "expected NAME=PATH"),
    ("missing_file", "does not exist"),
    ("bad_ensemble", "name two or more rows"),
    ("bad_against", "not a row"),
])
def test_rows_of_another_split_and_bad_arguments_are_refused(tmp_path, split, case, message):
    rng, targets, excluded = split
    scores = tmp_path / "scores"
    write_row(scores, "a", rng.normal(size=(USERS, ITEMS + 1)), targets, excluded)
    argv = ["--scores", str(scores)]
    if case == "other_targets":
        write_row(scores, "b", rng.normal(size=(USERS, ITEMS + 1)), targets % ITEMS + 1,
                  excluded)
    elif case == "other_shape":
        np.save(tmp_path / "peer.npy", np.zeros((USERS, ITEMS)))
        argv += ["--row", f"peer={tmp_path / 'peer.npy'}"]
    elif case == "no_npz":
        argv = ["--scores", str(tmp_path)]
    elif case == "bad_row":
        argv += ["--row", "peer"]
    elif case == "missing_file":
        argv += ["--row", f"peer={tmp_path / 'absent.npy'}"]
    elif case == "bad_ensemble":
        argv += ["--ensemble", "a+z"]
    elif case == "bad_against":
        argv += ["--against", "z"]
    with pytest.raises(UserInputError, match=message):
        logits, loaded = compare_scores.load_rows(*_rows_args(argv))
        compare_scores.compare(logits, loaded, _flag(argv, "--ensemble"),
                               _flag(argv, "--against"), 50)
    assert compare_scores.main(argv) == 2


def _rows_args(argv):
    return argv[1], _flag(argv, "--row")


def _flag(argv, name):
    return [argv[i + 1] for i, value in enumerate(argv) if value == name]
