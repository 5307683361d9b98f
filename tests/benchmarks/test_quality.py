"""benchmarks/quality.py: the per-user reshape, and an end-to-end run on a tiny MovieLens
fixture (ml-latest-small format) checking that every model is scored under one protocol."""

import json
import os

import numpy as np
import pytest

from benchmarks import quality
from tests.conftest import MINILM_DIR, REPO, require_shared
from tests.trainer.datasets.test_movielens import make_movies, make_ratings, write_csv_variant
from trainer import config as config_lib
from trainer import metrics, train_lib

TINY = os.path.join(REPO, "configs", "movielens_tiny.yaml")
N_USERS = 16  # plus user 99, who has too few positives and is dropped
NEGATIVES = 9
# movielens_tiny.yaml keeps only heavy users of the real data; the fixture's users are light.
FIXTURE_OVERRIDES = [
    "data.movielens.min_positives=3", f"data.movielens.eval_negatives={NEGATIVES}",
    "data.movielens.max_train_examples=0", "data.movielens.negatives_per_positive=2",
    "data.vocab_size=100", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=64",
]


@pytest.fixture(scope="module")
def ml_dir(tmp_path_factory):
    return write_csv_variant(tmp_path_factory.mktemp("ml") / "ml-latest-small",
                             make_ratings(n_users=N_USERS, n_items=50, per_user=14),
                             make_movies(50))


def _argv(ml_dir, out, *extra):
    argv = ["--dataset", "movielens", "--data_dir", ml_dir, "--out", str(out),
            "--config", TINY, "--bootstrap", "200", "--quiet"]
    for item in FIXTURE_OVERRIDES:
        argv += ["--set", item]
    return argv + list(extra)


@pytest.fixture(scope="module")
def quality_run(ml_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    assert quality.main(_argv(ml_dir, out, "--models", "popularity,mf,bert")) == 0
    with open(os.path.join(out, "quality.json")) as f:
        return out, json.load(f)


# ----------------------------------------------------------------------------- helpers

def test_user_matrix_moves_the_positive_to_column_zero():
    # Three impressions (groups 7, 2, 5), rows interleaved, positive at columns 2, 0 and 1
    # of each impression's own row order.
    groups = [7, 2, 7, 5, 2, 7, 5, 2, 5]
    labels = [0, 1, 0, 0, 0, 1, 1, 0, 0]
    logits = [0.1, 0.9, 0.2, 0.4, 0.8, 0.3, 0.6, 0.7, 0.5]
    scores, ids = quality.user_matrix(logits, labels, groups)
    assert ids.tolist() == [2, 5, 7]
    np.testing.assert_allclose(scores, [[0.9, 0.8, 0.7],   # group 2: positive was first
                                        [0.6, 0.4, 0.5],   # group 5: positive was second
                                        [0.3, 0.1, 0.2]])  # group 7: positive was last
    m = metrics.sampled_ranking_metrics(scores, positive_index=0, ks=(1,))
    assert m["hr@1"].tolist() == [1.0, 1.0, 1.0]  # each positive scores highest in its group
    assert m["mrr"].tolist() == [1.0, 1.0, 1.0]


def test_user_matrix_ranks_a_positive_that_is_not_first():
    scores, _ = quality.user_matrix([0.5, 0.9, 0.1, 0.2], [0, 0, 1, 0], [1, 1, 1, 1])
    np.testing.assert_allclose(scores, [[0.1, 0.5, 0.9, 0.2]])
    m = metrics.sampled_ranking_metrics(scores, positive_index=0, ks=(10,))
    assert m["mrr"][0] == pytest.approx(1 / 4) and m["auc"][0] == 0.0


@pytest.mark.parametrize("labels,groups,match", [
    ([1, 0, 1, 0, 0], [1, 1, 2, 2, 2], "differ in size"),
    ([1, 1, 0, 0], [1, 1, 2, 2], "exactly one positive"),
])
def test_user_matrix_rejects_irregular_impressions(labels, groups, match):
    with pytest.raises(ValueError, match=match):
        quality.user_matrix(np.zeros(len(labels)), labels, groups)


def test_regular_groups_keeps_one_positive_and_full_size():
    labels = [1, 0, 0, 1, 0, 0, 0, 1, 1]
    groups = [1, 1, 1, 2, 2, 3, 3, 3, 3]
    assert quality.regular_groups(labels, groups, 3).tolist() == [1]


# ----------------------------------------------------------------------------- end to end

def test_quality_json_structure(quality_run):
    out, result = quality_run
    assert [row["model"] for row in result["rows"]] == ["popularity", "mf", "bert"]
    protocol = result["protocol"]
    assert protocol["split"] == "leave-last-out chronological"
    assert protocol["negatives_per_user"] == NEGATIVES
    assert protocol["users_evaluated"] == N_USERS
    assert protocol["bootstrap_samples"] == 200
    for key in ("dataset", "data_dir", "variant", "positive_threshold", "seed"):
        assert key in protocol, key
    assert os.path.exists(os.path.join(out, "data_info.json"))
    assert os.path.exists(os.path.join(out, "config.yaml"))
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_every_row_is_scored_on_the_same_users_and_candidates(quality_run):
    _, result = quality_run
    for row in result["rows"]:
        assert row["users_evaluated"] == result["protocol"]["users_evaluated"]
        assert row["candidates_per_user"] == NEGATIVES + 1
        assert row["train_seconds"] >= 0 and row["score_seconds"] >= 0
        assert "comparison_on_subset" not in row


def test_every_row_has_metrics_inside_their_intervals(quality_run):
    _, result = quality_run
    for row in result["rows"]:
        assert set(row["ci95"]) == set(quality.METRICS)
        for key in quality.METRICS:
            low, high = row["ci95"][key]
            assert 0.0 <= low <= row[key] <= high <= 1.0, (row["model"], key)


def test_rows_record_model_settings(quality_run):
    _, result = quality_run
    rows = {row["model"]: row for row in result["rows"]}
    assert rows["popularity"]["settings"]["epochs_run"] == 0  # counted, not fitted
    assert rows["mf"]["settings"]["epochs_run"] == 1
    assert rows["bert"]["settings"]["num_layers"] == 1
    train_examples = {row["settings"]["train_examples"] for row in rows.values()}
    assert train_examples == {result["protocol"]["train_examples"]}


def test_missing_data_dir_is_a_clean_error(tmp_path, capsys):
    code = quality.main(["--data_dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                         "--config", TINY, "--models", "popularity"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert not os.path.exists(tmp_path / "o" / "quality.json")


@pytest.mark.parametrize("extra,match", [
    (["--models", "bert_pretrained"], "needs --pretrained"),
    (["--models", "popularity,svd"], "unknown model"),
    (["--set_for", "mf:data.max_history=2"], "shared by every model"),
    (["--pretrained", "/no/such/model"], "not a Hugging Face model directory"),
])
def test_bad_arguments_exit_2(tmp_path, capsys, extra, match):
    code = quality.main(["--data_dir", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
    assert code == 2
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_pretrained_row_compares_on_its_user_subset(ml_dir, tmp_path):
    minilm = require_shared(MINILM_DIR)
    assert quality.main(_argv(ml_dir, tmp_path, "--models", "popularity,bert_pretrained",
                              "--pretrained", minilm, "--pretrained_train_examples", "12",
                              "--pretrained_eval_users", "4")) == 0
    with open(os.path.join(tmp_path, "quality.json")) as f:
        result = json.load(f)
    popularity, pretrained = result["rows"]
    assert popularity["users_evaluated"] == N_USERS
    assert pretrained["users_evaluated"] == 4
    assert pretrained["settings"]["train_examples"] <= 12
    assert pretrained["settings"]["eval_users_subset"] is True
    assert set(pretrained["comparison_on_subset"]) == {"popularity", "bert_pretrained"}
    same = pretrained["comparison_on_subset"]["bert_pretrained"]
    assert same["users_evaluated"] == 4
    for key in quality.METRICS:
        assert same[key] == pytest.approx(pretrained[key])


# ----------------------------------------------------------------------------- the config

def test_movielens_config_trains_end_to_end(ml_dir, tmp_path):
    cfg = config_lib.load_config(os.path.join(REPO, "configs", "movielens.yaml"), [
        "data.movielens.eval_negatives=9", "data.movielens.max_train_examples=0",
        "data.vocab_size=100", "model.num_layers=1", "model.hidden_dim=16",
        "model.intermediate_dim=32", "train.epochs=1", "train.batch_size=8"])
    cfg.data.data_dir = ml_dir
    assert cfg.data.source == "movielens"
    results = train_lib.train(cfg, str(tmp_path / "run"))
    with open(tmp_path / "run" / "metrics.json") as f:
        saved = json.load(f)
    keys = {"auc", "logloss", "group_auc", "mrr", "ndcg@5", "ndcg@10", "hr@10", "examples"}
    assert keys <= set(saved["test"]) and keys <= set(saved["validation"])
    assert saved["test"]["examples"] == N_USERS * (NEGATIVES + 1)
    assert saved["test"]["groups"] == N_USERS
    assert results["train"]["epochs_run"] == 1
