"""benchmarks/quality.py: the per-user reshape, the full-ranking metric and rated sets, and
an end-to-end run on a tiny MovieLens fixture (ml-latest-small format) checking that every
model is scored under one protocol, sampled and full-ranking."""

import json
import os

import numpy as np
import pytest

from benchmarks import compare_scores, quality
from tests.harness import (MINILM_DIR, REPO, SEQ_ITEMS, SEQ_USERS, require_shared,
                           tiny_checkpoint, write_sequence_fixture)
from tests.trainer.data.test_movielens import make_movies, make_ratings, write_csv_variant
from trainer import config as config_lib
from trainer.data import input_pipeline
from trainer.evaluation import metrics
from trainer.training import train_lib

TINY = os.path.join(REPO, "configs", "movielens_tiny.yaml")
N_USERS = 16  # plus user 99, who has too few positives and is dropped
N_ITEMS = 50
PER_USER = 14  # distinct items each fixture user rated
NEGATIVES = 9
PAIRWISE_USERS = 4  # the cross-encoder's full-ranking user subset in the fixture run
ROWS = ["popularity", "mf", "sasrec", "two_tower", "bert", "bert_rerank"]
# movielens_tiny.yaml keeps only heavy users of the real data; the fixture's users are light.
FIXTURE_OVERRIDES = [
    "data.movielens.min_positives=3", f"data.movielens.eval_negatives={NEGATIVES}",
    "data.movielens.max_train_examples=0", "data.movielens.negatives_per_positive=2",
    "data.vocab_size=100", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=64",
]


@pytest.fixture(scope="module")
def ml_dir(tmp_path_factory):
    return write_csv_variant(tmp_path_factory.mktemp("ml") / "ml-latest-small",
                             make_ratings(n_users=N_USERS, n_items=N_ITEMS,
                                          per_user=PER_USER),
                             make_movies(N_ITEMS))


def _argv(ml_dir, out, *extra):
    argv = ["--dataset", "movielens", "--data_dir", ml_dir, "--out", str(out),
            "--config", TINY, "--bootstrap", "200", "--quiet"]
    for item in FIXTURE_OVERRIDES:
        argv += ["--set", item]
    return argv + list(extra)


@pytest.fixture(scope="module")
def quality_run(ml_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    # The tuned MF defaults train for many epochs and the cross-encoder's budget is
    # thousands of steps; one short epoch each keeps the fixture run short.
    assert quality.main(_argv(ml_dir, out, "--models", ",".join(ROWS),
                              "--set_for", "mf:train.epochs=1",
                              "--set_for", "bert:train.epochs=1",
                              "--set_for", "bert:train.steps_per_epoch=0",
                              "--set_for", "bert:train.batch_size=8",
                              "--set_for", "bert_rerank:train.epochs=1",
                              "--set_for", "bert_rerank:train.steps_per_epoch=0",
                              "--set_for", "bert_rerank:train.batch_size=8",
                              "--rerank_train_positives", "20",
                              "--full_ranking_pairwise_users", str(PAIRWISE_USERS),
                              "--ensemble", "sasrec+two_tower")) == 0
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


def test_full_ranking_metrics_by_hand():
    # Column 0 ("no item") and rated items are excluded; ties count against the positive.
    scores = [[9.0, 0.5, 0.9, 0.7, 0.9, 0.1],   # positive: item 2 (0.9)
              [9.0, 0.3, 0.2, 0.8, 0.1, 0.4]]   # positive: item 5 (0.4)
    exclude = [[True, False, True, True, False, False],   # user 0 rated items 2 and 3
               [True, True, False, False, False, True]]   # user 1 rated items 1 and 5
    m = metrics.full_ranking_metrics(scores, [2, 5], exclude=exclude, ks=(1, 2))
    # User 0: candidates 1 (0.5), 4 (0.9, tied: above), 5 (0.1) -> rank 2.
    # User 1: candidates 2 (0.2), 3 (0.8, above), 4 (0.1) -> rank 2.
    assert m["candidates"].tolist() == [3.0, 3.0]
    assert m["mrr"].tolist() == [0.5, 0.5]
    assert m["hr@1"].tolist() == [0.0, 0.0] and m["hr@2"].tolist() == [1.0, 1.0]
    np.testing.assert_allclose(m["ndcg@2"], [1 / np.log2(3)] * 2)
    # Without exclusions both also lose to column 0 (9.0) -> rank 3; item 3 (0.7) is
    # below user 0's positive, item 1 (0.3) below user 1's.
    m = metrics.full_ranking_metrics(scores, [2, 5], ks=(10,))
    assert m["mrr"].tolist() == [1 / 3, 1 / 3] and m["candidates"].tolist() == [5.0, 5.0]


def test_full_ranking_metrics_constant_scorer_gets_the_worst_rank():
    m = metrics.full_ranking_metrics(np.zeros([1, 7]), [3], ks=(10,))
    assert m["mrr"][0] == pytest.approx(1 / 7)


@pytest.mark.parametrize("kwargs,match", [
    ({"scores": np.zeros(3), "positive_index": [0]}, "shape"),
    ({"scores": np.zeros([2, 3]), "positive_index": [0]}, "entries"),
    ({"scores": np.zeros([1, 3]), "positive_index": [3]}, "must lie in"),
    ({"scores": np.zeros([1, 3]), "positive_index": [0], "exclude": np.zeros([1, 2])},
     "exclude has shape"),
])
def test_full_ranking_metrics_rejects_bad_shapes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.full_ranking_metrics(**kwargs)


def test_rated_mask_holds_every_rating_of_the_user(ml_dir):
    cfg = config_lib.load_config(TINY, FIXTURE_OVERRIDES)
    cfg.data.data_dir = ml_dir
    ratings = make_ratings(n_users=N_USERS, n_items=N_ITEMS, per_user=PER_USER)
    items = {str(i): i for i in range(1, N_ITEMS + 1)}  # item "i" -> column i
    ids = input_pipeline.IdVocabulary(users={}, items=items)
    mask = quality._rated_mask(cfg, ids, ["3", "99"])
    for row, user in enumerate((3, 99)):
        rated = {i for u, i, _, _ in ratings if u == user}  # low ratings included
        assert set(np.flatnonzero(mask[row]).tolist()) == {0} | rated


def test_set_for_extends_the_tuned_defaults():
    args = quality._parser().parse_args(["--data_dir", "d", "--out", "o", "--set_for",
                                         "mf:model.l2=0.5", "--set_for", "bert:train.epochs=1"])
    per_model = quality._per_model_overrides(args)
    assert per_model["mf"] == quality.DEFAULT_SET_FOR["mf"] + ["model.l2=0.5"]
    assert per_model["bert"] == quality.DEFAULT_SET_FOR["bert"] + ["train.epochs=1"]
    assert per_model["sasrec"] == []
    assert quality.DEFAULT_SET_FOR["mf"]  # the tuned settings are recorded


# The long command the Scientific figures in docs/benchmarks.md were measured with.
MEASURED_SCIENTIFIC_SET = [
    "data.sequences.eval_negatives=19", "data.item_max_tokens=64", "data.sequence_length=67",
    "model.max_sequence_length=67", "data.max_history=20", "model.similarity=cosine",
    "model.max_interest=false", "model.user_pooling=first",
    "train.early_stopping_patience=5", "model.hidden_dim=128"]
MEASURED_SCIENTIFIC_SET_FOR = {
    "sasrec": ["train.loss=full_softmax"],
    "frozen_text_ids": ["train.loss=full_softmax", "model.adapter=moe", "model.pooling=mean",
                        "model.dropout=0.3"]}


def test_the_scientific_recipe_is_the_measured_command():
    """configs/scientific.yaml plus RECIPE_SET_FOR resolve to exactly the configs of the
    measured command (configs/sequences.yaml with its --set / --set_for flags), row by row."""
    def resolved(config, overrides):
        cfg = config_lib.load_config(os.path.join(REPO, "configs", config), overrides)
        cfg.name = ""
        return config_lib.dump_yaml(cfg)

    args = quality._parser().parse_args(["--dataset", "scientific", "--data_dir", "d",
                                         "--out", "o"])
    per_model = quality._per_model_overrides(args)
    for name, measured in MEASURED_SCIENTIFIC_SET_FOR.items():
        row = quality.row_overrides()[name]
        assert resolved("scientific.yaml", row + per_model[name]) == resolved(
            "sequences.yaml", MEASURED_SCIENTIFIC_SET + row + measured), name


@pytest.mark.parametrize("argv, recipe", [
    (["--dataset", "scientific"], True),
    (["--dataset", "sequences", "--config", os.path.join(REPO, "configs", "scientific.yaml")],
     True),
    (["--dataset", "sequences"], False),
    (["--dataset", "movielens"], False),
])
def test_the_recipe_rows_follow_the_config(argv, recipe):
    args = quality._parser().parse_args(argv + ["--data_dir", "d", "--out", "o", "--set_for",
                                                "sasrec:train.learning_rate=3e-4"])
    per_model = quality._per_model_overrides(args)
    expected = ["train.loss=full_softmax"] if recipe else []
    # --set_for comes last, so it overrides the recipe.
    assert per_model["sasrec"] == expected + ["train.learning_rate=3e-4"]
    assert ("model.dropout=0.3" in per_model["frozen_text_ids"]) == recipe
    assert per_model["mf"] == quality.DEFAULT_SET_FOR["mf"]


# ----------------------------------------------------------------------------- end to end

def test_quality_json_structure(quality_run):
    out, result = quality_run
    assert [row["model"] for row in result["rows"]] == ROWS + ["sasrec+two_tower"]
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
    # The finished-rows file lives only while the run does.
    assert not os.path.exists(os.path.join(out, quality.PARTIAL_FILE))


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
    assert rows["mf"]["overrides"] == quality.DEFAULT_SET_FOR["mf"] + ["train.epochs=1"]
    assert rows["bert"]["settings"]["num_layers"] == 1
    assert rows["bert"]["settings"]["kind"] == "cross_encoder"
    assert rows["two_tower"]["settings"]["kind"] == "two_tower"
    assert rows["two_tower"]["settings"]["item_ids"] is True
    assert rows["sasrec"]["settings"]["kind"] == "sasrec"
    assert rows["sasrec"]["settings"]["epochs_run"] == 1
    train_examples = {row["settings"]["train_examples"] for name, row in rows.items()
                      if name != "bert_rerank" and "ensemble_of" not in row}
    assert train_examples == {result["protocol"]["train_examples"]}
    # 20 positives, each with 2 retrieved negatives (the fixture's 2 negatives per positive
    # are all replaced: --rerank_hard_negatives 2)
    assert rows["bert_rerank"]["settings"]["train_examples"] == 20 * 3


def test_every_row_is_fully_ranked(quality_run):
    _, result = quality_run
    full = result["protocol"]["full_ranking"]
    assert full["catalogue_items"] == N_ITEMS
    # Each fixture user rated PER_USER distinct items: the rest are the candidates.
    assert full["candidates_per_user"] == {"min": N_ITEMS - PER_USER,
                                           "mean": N_ITEMS - PER_USER,
                                           "max": N_ITEMS - PER_USER}
    assert full["pairwise_users"] == PAIRWISE_USERS
    for row in result["rows"]:
        ranked = row["full_ranking"]
        assert set(ranked["ci95"]) == set(quality.FULL_METRICS)
        for key in quality.FULL_METRICS:
            low, high = ranked["ci95"][key]
            assert 0.0 <= low <= ranked[key] <= high <= 1.0, (row["model"], key)
        assert ranked["candidates_per_user"]["min"] == N_ITEMS - PER_USER
        # recall@100: with 36 candidates the positive always ranks within 100.
        assert ranked["hr@100"] == 1.0 >= ranked["hr@10"], row["model"]
        # Catalogue logits equal the pairwise predict logits on the sampled candidates (an
        # ensemble's sampled scores are read from its catalogue scores).
        if "ensemble_of" not in row:
            assert ranked["max_abs_logit_diff_vs_sampled"] < 1e-4, row["model"]
        # Sampled ranking among 9 negatives can only be as good or better than among 36.
        assert ranked["mrr"] <= row["mrr"] + 1e-9 or ranked["users_subset"], row["model"]


def test_only_the_cross_encoder_is_ranked_on_a_user_subset(quality_run):
    _, result = quality_run
    rows = {row["model"]: row for row in result["rows"]}
    for name in ("popularity", "mf", "sasrec", "two_tower"):
        ranked = rows[name]["full_ranking"]
        assert not ranked["pairwise"] and not ranked["users_subset"], name
        assert ranked["users_evaluated"] == N_USERS
        assert "comparison_on_subset" not in ranked
    bert = rows["bert"]["full_ranking"]
    assert bert["pairwise"] and bert["users_subset"]
    assert bert["users_evaluated"] == PAIRWISE_USERS
    # Every row fully ranked for these users, the ensemble included.
    assert list(bert["comparison_on_subset"]) == ROWS + ["sasrec+two_tower"]
    for name, values in bert["comparison_on_subset"].items():
        assert values["users_evaluated"] == PAIRWISE_USERS, name
    for key in quality.FULL_METRICS:
        assert bert["comparison_on_subset"]["bert"][key] == pytest.approx(bert[key])


def test_printed_tables(quality_run):
    _, result = quality_run
    table = quality.format_full_table(result["rows"])
    assert "bert*" in table and "sasrec " in table
    rerank = quality.format_rerank_table(result["rows"]).splitlines()
    assert [line.split()[0] for line in rerank[2:]] == ["two_tower"] + ["->"] * 4


def test_retrieve_rerank_blocks(quality_run):
    """Each cross-encoder row reranks the two_tower row's retrieved items. In the fixture
    every unrated item is retrieved (36 < 100), so retrieval alone must reproduce the
    two_tower row's own full ranking exactly."""
    _, result = quality_run
    rows = {row["model"]: row for row in result["rows"]}
    assert result["protocol"]["retrieve_rerank"]["rerankers"] == ["bert", "bert_rerank"]
    assert [name for name, row in rows.items() if "retrieve_rerank" in row] == \
        ["bert", "bert_rerank"]
    full = rows["two_tower"]["full_ranking"]
    for name in ("bert", "bert_rerank"):
        block = rows[name]["retrieve_rerank"]
        assert block["candidates"] == N_ITEMS - PER_USER + 1
        assert block["recall@candidates"] == 1.0
        for key in quality.RERANK_METRICS:
            assert block["retrieval"][key] == pytest.approx(full[key]), key
        assert block["retrieval_weight"] in quality.FUSION_WEIGHTS
        assert set(block["validation_ndcg@10_by_weight"]) == {str(w) for w in
                                                               quality.FUSION_WEIGHTS}
        best = max(block["validation_ndcg@10_by_weight"].values())
        assert block["validation_ndcg@10_by_weight"][str(block["retrieval_weight"])] == best
        for stage in ("retrieval", "rerank", "fused"):
            assert block[stage]["users_evaluated"] == N_USERS
            low, high = block[stage]["ci95"]["ndcg@10"]
            assert 0.0 <= low <= block[stage]["ndcg@10"] <= high <= 1.0
        for stage in ("rerank", "fused"):
            diff = block[stage]["difference_vs_retrieval"]["ndcg@10"]
            assert diff["mean"] == pytest.approx(block[stage]["ndcg@10"]
                                                 - block["retrieval"]["ndcg@10"])
            assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
        assert block["seconds_per_user"]["rerank"] > 0


def test_top_candidates_by_hand():
    logits = np.array([[0.0, 5.0, 4.0, 3.0, 2.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    exclude = np.array([[True, True, False, False, False], [True, False, False, True, True]])
    # user 0 rated item 1 (blocked); user 1 rated 3 and 4, but 4 is its held-out item
    items, scores = quality.top_candidates(logits, exclude, positive=[2, 4], n=2)
    assert items.tolist() == [[2, 3], [4, 2]]
    assert scores.tolist() == [[4.0, 3.0], [4.0, 2.0]]
    assert exclude[1, 4]  # the caller's mask is not modified


def test_candidate_ranking_metrics_ties_count_against_the_positive():
    m = quality.candidate_ranking_metrics([[5, 6, 7]], [[1.0, 1.0, 0.0]], [6], k=1)
    assert m["hr@1"].tolist() == [0.0] and m["retrieved"].tolist() == [1.0]
    m = quality.candidate_ranking_metrics([[5, 6, 7]], [[1.0, 1.0, 0.0]], [6], k=2)
    assert m["ndcg@2"][0] == pytest.approx(1 / np.log2(3))


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
    (["--full_ranking_pairwise_users", "-1"], "--full_ranking_pairwise_users"),
    (["--full_ranking_pretrained_users", "-2"], "--full_ranking_pretrained_users"),
    (["--models", "bert_rerank,two_tower"], "list two_tower before it"),
    (["--models", "two_tower,bert_rerank", "--rerank_candidates", "0"],
     "--rerank_candidates > 0"),
    (["--rerank_hard_negatives", "-1"], "must be >= 0"),
    # Valid for the sasrec row, not for the base config's two_tower kind.
    (["--config", TINY, "--models", "sasrec", "--set", "train.loss=full_softmax"],
     "set a key for one row with --set_for MODEL:KEY=VALUE"),
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
                              "--pretrained_eval_users", "4",
                              "--full_ranking_pretrained_users", "4")) == 0
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
    # Its full ranking (pairwise) covers the same 4 users, compared with every row there.
    ranked = pretrained["full_ranking"]
    assert ranked["pairwise"] and ranked["users_subset"] and ranked["users_evaluated"] == 4
    assert set(ranked["comparison_on_subset"]) == {"popularity", "bert_pretrained"}
    assert ranked["comparison_on_subset"]["popularity"]["users_evaluated"] == 4
    assert ranked["max_abs_logit_diff_vs_sampled"] < 1e-4


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


# ------------------------------------------------------------- the sequential benchmarks

SEQ_NEGATIVES = 5


def test_a_sequential_benchmark_ranks_everything_and_prints_the_published_rows(
        tmp_path, capsys):
    data_dir = write_sequence_fixture(tmp_path / "scientific")
    argv = ["--dataset", "scientific", "--data_dir", data_dir, "--out", str(tmp_path / "out"),
            "--models", "popularity,item_knn,sasrec,two_tower,frozen_text,frozen_text_ids",
            "--pretrained", tiny_checkpoint(), "--bootstrap", "100", "--quiet",
            "--save_scores"]
    for item in [f"data.sequences.eval_negatives={SEQ_NEGATIVES}", "data.vocab_size=100",
                 "model.hidden_dim=16", "model.intermediate_dim=32", "model.user_layers=1",
                 "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=64",
                 "data.sequences.cold_start_items=0.2"]:
        argv += ["--set", item]
    assert quality.main(argv) == 0
    with open(tmp_path / "out" / "quality.json") as f:
        result = json.load(f)
    protocol = result["protocol"]
    assert protocol["files"] == "Scientific" and protocol["users_evaluated"] == SEQ_USERS
    full = protocol["full_ranking"]
    assert full["excluded_from"] == "nothing" and full["ks"] == [10, 50, 100]
    # Nothing is excluded: every other catalogue item competes with the target.
    assert full["candidates_per_user"] == {"min": SEQ_ITEMS - 1, "mean": SEQ_ITEMS - 1,
                                           "max": SEQ_ITEMS - 1}
    for row in result["rows"]:
        ranked = row["full_ranking"]
        for key in ("hr@10", "ndcg@10", "hr@50", "ndcg@50"):
            low, high = ranked["ci95"][key]
            assert 0.0 <= low <= ranked[key] <= high <= 1.0, (row["model"], key)
        assert ranked["hr@50"] == 1.0  # 30 items: the target is always within 50
        assert row["candidates_per_user"] == SEQ_NEGATIVES + 1
    settings = {row["model"]: row["settings"] for row in result["rows"]}
    ranked = {row["model"]: row["full_ranking"] for row in result["rows"]}
    # Each user's next item follows its last one in other users' training sequences: the
    # neighbours find it for most users whose target training saw (none of the others).
    assert ranked["item_knn"]["hr@10"] > ranked["popularity"]["hr@10"]
    assert ranked["item_knn"]["hr@10"] >= 0.5 and settings["item_knn"]["neighbours"] == 100
    for name in ("sasrec", "two_tower", "frozen_text", "frozen_text_ids"):
        assert settings[name]["early_stopping_metric"] == "full_ndcg@10"
        assert 0.0 <= settings[name]["best_val_full_ndcg@10"] <= 1.0
    # The frozen rows share one encoding of the catalogue, cached in the output.
    first, second = settings["frozen_text"], settings["frozen_text_ids"]
    assert first["text_vectors_reused"] is False and first["text_encoding_seconds"] >= 0
    assert second["text_vectors_reused"] is True and second["text_encoding_seconds"] == 0
    assert first["text_vectors_fingerprint"] == second["text_vectors_fingerprint"]
    assert first["pretrained"] == tiny_checkpoint()
    assert len(os.listdir(tmp_path / "out" / "text_vectors")) == 1
    # Paired differences between every two rows ranked for all users, both ways round.
    # The sampled protocol's too (in the row itself), equal to the difference of the means.
    names = [row["model"] for row in result["rows"]]
    for row in result["rows"]:
        for where in (row["full_ranking"], row):
            paired = where["paired_difference"]
            assert set(paired) == set(names) - {row["model"]}
            for other, values in paired.items():
                mirror = next(r for r in result["rows"] if r["model"] == other)
                there = mirror if where is row else mirror["full_ranking"]
                back = there["paired_difference"][row["model"]]["ndcg@10"]
                assert values["ndcg@10"]["mean"] == pytest.approx(-back["mean"])
                low, high = values["ndcg@10"]["ci95"]
                assert low <= values["ndcg@10"]["mean"] <= high
        assert row["paired_difference"][other]["ndcg@10"]["mean"] == pytest.approx(
            row["ndcg@10"] - mirror["ndcg@10"], abs=1e-9)
    # Cold start: 6 of the 30 items left out of training; the users whose test target is
    # one of them are scored again, by every row.
    cold = protocol["cold_start"]
    assert cold["items_held_out"] == 6 and cold["train_rows_dropped"] > 0
    assert 0 < cold["test_users"] < SEQ_USERS
    for row in result["rows"]:
        assert row["cold_start"]["users_evaluated"] == cold["test_users"]
        assert 0.0 <= row["cold_start"]["ndcg@10"] <= 1.0
    # --save_scores: each row's catalogue logits, from which its metrics follow again.
    for row in result["rows"]:
        saved = np.load(tmp_path / "out" / "scores" / f"{row['model']}.npz")
        assert saved["logits"].shape == saved["excluded"].shape == (SEQ_USERS, SEQ_ITEMS + 1)
        assert len(set(saved["users"].tolist())) == SEQ_USERS
        again = metrics.full_ranking_metrics(saved["logits"], saved["targets"],
                                             exclude=saved["excluded"], ks=(10,))
        assert again["ndcg@10"].mean() == pytest.approx(row["full_ranking"]["ndcg@10"])
    # benchmarks.compare_scores reads them back to the benchmark's own figures: its
    # intervals and paired differences (same bootstrap and seed).
    logits, split = compare_scores.load_rows(str(tmp_path / "out" / "scores"), [])
    offline = compare_scores.compare(logits, split, ["popularity+item_knn"], ["popularity"],
                                     100, seed=13)
    knn = next(r for r in result["rows"] if r["model"] == "item_knn")["full_ranking"]
    assert offline["item_knn"]["ci95"]["ndcg@10"] == pytest.approx(knn["ci95"]["ndcg@10"])
    paired = offline["item_knn"]["paired_difference"]["popularity"]["ndcg@10"]
    expected = knn["paired_difference"]["popularity"]["ndcg@10"]
    assert paired["mean"] == pytest.approx(expected["mean"])
    assert paired["ci95"] == pytest.approx(expected["ci95"])
    # Neighbours counted from training cannot reach an item training never saw.
    knn_cold = next(r for r in result["rows"] if r["model"] == "item_knn")["cold_start"]
    assert knn_cold["hr@10"] == 0.0
    out = capsys.readouterr().out
    assert "cold start: the" in out and "paired over the same users" in out
    assert "against every catalogue item, history included" in out
    assert "UniSRec (published)" in out and "MISSRec (published)" in out
    assert "(this run)" in out


def test_trained_rows_report_time_to_quality_and_the_plot(quality_run):
    out, result = quality_run
    rows = {row["model"]: row for row in result["rows"]}
    assert "time_to_quality" not in rows["popularity"]  # nothing trained
    for name in ("mf", "sasrec", "two_tower"):
        ttq = rows[name]["time_to_quality"]
        assert ttq["metric"] == "val_" + rows[name]["settings"]["early_stopping_metric"]
        assert len(ttq["curve"]) == rows[name]["settings"]["epochs_run"]
        # Model building, then the epochs: inside the row's training time.
        assert 0 < ttq["seconds_to_best_epoch"] <= ttq["total_seconds"]
        assert ttq["total_seconds"] == rows[name]["train_seconds"]
        assert 0 < ttq["train_seconds_per_epoch"] <= ttq["seconds_per_epoch"]
        assert ttq["train_examples_per_s"] > 0
    assert os.path.getsize(os.path.join(out, "time_to_quality.png")) > 1000


def test_time_to_quality_by_hand():
    ttq = quality.time_to_quality([10.0, 25.0, 35.0], [0.1, 0.3, 0.2], [8.0, 9.0, 7.0], 900,
                                  40.0, offset=2.0)
    assert ttq["best_epoch"] == 2 and ttq["seconds_to_best_epoch"] == 27.0
    assert ttq["seconds_per_epoch"] == 10.0 and ttq["train_seconds_per_epoch"] == 8.0
    assert ttq["train_examples_per_s"] == 112.5 and ttq["curve"][0] == [12.0, 0.1]


def test_an_ensemble_ranks_by_its_members_standardized_logits(quality_run):
    _, result = quality_run
    rows = {row["model"]: row for row in result["rows"]}
    ensemble = rows["sasrec+two_tower"]
    assert ensemble["ensemble_of"] == ["sasrec", "two_tower"]
    assert ensemble["train_seconds"] == pytest.approx(
        rows["sasrec"]["train_seconds"] + rows["two_tower"]["train_seconds"], abs=0.02)
    full = ensemble["full_ranking"]
    assert full["users_evaluated"] == rows["sasrec"]["full_ranking"]["users_evaluated"]
    assert full["ci95"]["ndcg@10"][0] <= full["ndcg@10"] <= full["ci95"]["ndcg@10"][1]
    assert set(full["paired_difference"]) >= {"sasrec", "two_tower"}
    assert ensemble["candidates_per_user"] == NEGATIVES + 1


def test_standardized_scores_by_hand():
    scores = np.array([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 5.0, 5.0]])
    exclude = np.array([[False, False, False, True], [False, False, False, False]])
    z = quality.standardized(scores, exclude)
    spread = np.sqrt(2 / 3)
    np.testing.assert_allclose(z[0, :3], [-1 / spread, 0.0, 1 / spread])
    np.testing.assert_allclose(z[1], 0.0)  # a constant row does not divide by zero


def test_paired_differences_are_bootstrapped_once_per_pair(monkeypatch):
    rng = np.random.default_rng(0)
    per_user = {name: {key: rng.random(30) for key in ("mrr", *quality.PAIRED_METRICS)}
                for name in ("a", "b", "c")}
    calls = []
    real = quality._paired
    monkeypatch.setattr(quality, "_paired",
                        lambda difference, *args: calls.append(1) or real(difference, *args))
    memo = {}
    first = [{"model": "a"}, {"model": "b"}]
    quality._add_paired_differences(first, per_user, 30, 50, 0, None, memo)
    assert len(calls) == 2 * len(quality.PAIRED_METRICS)  # a-b and b-a
    rows = [{"model": "a"}, {"model": "b"}, {"model": "c"}]
    quality._add_paired_differences(rows, per_user, 30, 50, 0, None, memo)
    assert len(calls) == 6 * len(quality.PAIRED_METRICS)  # only the pairs with c are new
    assert rows[0]["paired_difference"]["b"] == first[0]["paired_difference"]["b"]
    fresh = [{"model": "a"}, {"model": "b"}, {"model": "c"}]
    quality._add_paired_differences(fresh, per_user, 30, 50, 0, None)
    assert fresh == rows  # the memo changes nothing but the work
    difference = per_user["c"]["ndcg@10"] - per_user["a"]["ndcg@10"]
    assert rows[2]["paired_difference"]["a"]["ndcg@10"]["mean"] == pytest.approx(
        difference.mean())


@pytest.mark.parametrize("spec", ["sasrec", "sasrec+sasrec", "sasrec+nope"])
def test_bad_ensembles_exit_2(ml_dir, tmp_path, capsys, spec):
    assert quality.main(_argv(ml_dir, tmp_path, "--models", "popularity,sasrec",
                              "--ensemble", spec)) == 2
    assert "--ensemble" in capsys.readouterr().err


def test_a_stopped_run_keeps_its_finished_rows_with_paired_differences(
        ml_dir, tmp_path, monkeypatch):
    """The third row is stopped: quality.json is never written, but quality.partial.json
    holds the two finished rows, each with its paired difference against the other."""
    real_fit, calls = train_lib.fit_model, []

    def fit_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what stopping a long run by hand raises
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train_lib, "fit_model", fit_then_fail)
    with pytest.raises(KeyboardInterrupt):
        quality.main(_argv(ml_dir, tmp_path, "--models", "popularity,mf,sasrec",
                           "--set_for", "mf:train.epochs=1"))
    assert not os.path.exists(tmp_path / "quality.json")
    with open(tmp_path / quality.PARTIAL_FILE) as f:
        partial = json.load(f)
    assert partial["partial"] is True
    assert partial["finished"] == ["popularity", "mf"]
    rows = {row["model"]: row for row in partial["rows"]}
    difference = rows["mf"]["full_ranking"]["paired_difference"]["popularity"]["ndcg@10"]
    assert difference["mean"] == pytest.approx(
        rows["mf"]["full_ranking"]["ndcg@10"] - rows["popularity"]["full_ranking"]["ndcg@10"],
        abs=1e-9)
    assert difference["ci95"][0] <= difference["mean"] <= difference["ci95"][1]
    assert "popularity" in rows["mf"]["paired_difference"]  # the sampled protocol too
