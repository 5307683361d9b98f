"""Retrieve -> rerank: the pipeline config, candidate scoring and the two-stage recommender
(trainer/serving/recommend_lib.py RetrieveRerank) on the micro runs."""

import os

import numpy as np
import pytest

from trainer import config as config_lib
from trainer import runs
from trainer.kinds.item_index import ItemIndex
from trainer.serving import retrieval
from trainer.errors import ConfigError, UserInputError


def test_fuse_and_rank_by_hand():
    candidates = np.array([[7, 3, 9], [1, 2, 4]])
    retrieval_logits = np.array([[3.0, 2.0, 1.0], [0.0, 5.0, 0.0]])
    rerank_logits = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 1.0]])
    # The reranker alone: row 0 orders 3 (1.0), 9 (0.5), 7 (0.0); row 1 ties 1 and 4 at 1.0
    # and keeps the retrieval order between them.
    items, scores, order = retrieval.fuse_and_rank(candidates, retrieval_logits,
                                                   rerank_logits, k=2)
    assert items.tolist() == [[3, 9], [1, 4]]
    assert scores.tolist() == [[1.0, 0.5], [1.0, 1.0]]
    assert order.tolist() == [[1, 2], [0, 2]]
    # Weight 1: scores 3.0, 3.0, 1.5 and 1.0, 5.0, 1.0.
    items, scores, _ = retrieval.fuse_and_rank(candidates, retrieval_logits, rerank_logits,
                                               k=3, retrieval_weight=1.0)
    assert items.tolist() == [[7, 3, 9], [2, 1, 4]]
    assert scores[1].tolist() == [5.0, 1.0, 1.0]
    with pytest.raises(UserInputError, match="k must be in"):
        retrieval.fuse_and_rank(candidates, retrieval_logits, rerank_logits, k=4)


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return str(path)


def test_the_shipped_pipeline_config_loads():
    cfg = config_lib.load_pipeline(os.path.join("configs", "retrieve_rerank.yaml"))
    assert cfg.retrieve.candidates == 100 and cfg.rerank.model_dir and cfg.k == 10


@pytest.mark.parametrize("text, key", [
    ("retrieve: {candidates: 5}\nrerank: {model_dir: b}\n", "retrieve.model_dir"),
    ("retrieve: {model_dir: a}\nrerank: {model_dir: b, weight: 1}\n", "rerank.weight"),
    ("retrieve: {model_dir: a, candidates: 5}\nrerank: {model_dir: b}\nk: 6\n", "'k'"),
    ("retrieve: {model_dir: a, candidates: 0}\nrerank: {model_dir: b}\nk: 1\n",
     "retrieve.candidates"),
    ("retrieve: {model_dir: a}\nrerank: {model_dir: b, retrieval_weight: -1}\n",
     "rerank.retrieval_weight"),
    ("retrieve: {model_dir: a}\nrerank: {model_dir: b}\nk: ten\n", "'k'"),
])
def test_a_bad_pipeline_config_names_its_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=key) as err:
        config_lib.load_pipeline(path)
    assert path in str(err.value)


def test_candidate_logits_equal_pairwise_prediction_and_the_catalogue_matrix(
        trained_two_tower_run):
    """A two-tower kind's catalogue matrix (score_matrix over cached item vectors) and the
    generic pair-by-pair candidate scoring must give the same logits."""
    import keras

    from trainer import kinds
    from trainer.kinds.base import ModelKind
    from trainer.training import train_lib

    model_dir, _ = trained_two_tower_run
    cfg = runs.read_config(model_dir)
    prepared = train_lib.prepare_data(cfg, model_dir)
    featurizer = runs.open_run(model_dir).featurizer
    model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
    kind = kinds.for_config(cfg)
    users = prepared.tables["test"].subset(np.arange(3))
    item_text = prepared.ids.item_texts(prepared.catalogue, cfg.data.item_text_fields)
    full = kind.catalogue_logits(model, featurizer, users, item_text, 16)
    candidates = np.random.default_rng(0).integers(1, len(item_text), size=(3, 5))
    pairwise = ModelKind.candidate_logits(kind, model, featurizer, users, candidates,
                                          item_text, 16)
    np.testing.assert_allclose(pairwise, np.take_along_axis(full, candidates, axis=1),
                               atol=1e-4)


@pytest.fixture(scope="module")
def pipeline(trained_two_tower_run, trained_run, tmp_path_factory):
    """Retrieve with the micro two-tower run, rerank with the micro cross-encoder (both
    trained on the same synthetic data)."""
    path = tmp_path_factory.mktemp("pipeline") / "pipeline.yaml"
    path.write_text(f"retrieve: {{model_dir: {trained_two_tower_run[0]}, candidates: 8}}\n"
                    f"rerank: {{model_dir: {trained_run[1]}}}\nk: 4\n")
    return str(path)


def test_retrieve_rerank_reorders_the_retrieved_items_by_the_rerankers_logits(pipeline):
    from trainer.serving import recommend_lib
    from trainer.evaluation import scoring

    cfg = config_lib.load_pipeline(pipeline)
    two_stage = recommend_lib.RetrieveRerank(cfg)
    history = two_stage.retriever.index.item_ids[:3]
    top = two_stage.recommend(["a query", ""], [history, []])
    assert [len(row) for row in top] == [4, 4]
    positions, retrieval_logits = two_stage.retriever.retrieve(["a query"], [history], 8)
    retrieved = [two_stage.retriever.index.item_ids[p] for p in positions[0]]
    assert {r["item_id"] for r in top[0]} <= set(retrieved)
    assert not {r["item_id"] for r in top[0]} & set(history)
    scores = [r["score"] for r in top[0]]
    assert scores == sorted(scores, reverse=True)
    assert scores == [r["rerank_logit"] for r in top[0]]  # retrieval_weight 0
    # The reranker's logit is the cross-encoder's own prediction of that pair, its user
    # side written from the query and the history's titles (oldest first) as in training.
    rows = two_stage.user_rows(["a query"], [history])
    table = rows.subset(np.zeros(len(top[0]), int))
    table.item_index = np.array([two_stage.ids.items[r["item_id"]] for r in top[0]], np.int32)
    table.item_text = two_stage.item_text[table.item_index]
    titles = [two_stage.catalogue[item].title for item in history[::-1]]
    assert all(title in rows.user_text[0] for title in titles)
    direct = scoring.predict_logits(two_stage.model, table, two_stage.featurizer, 8)
    np.testing.assert_allclose(direct, [r["rerank_logit"] for r in top[0]], atol=1e-5)
    # The best of all retrieved items under the reranker comes first.
    every = two_stage.recommend(["a query"], [history], k=8)[0]
    assert top[0][0]["item_id"] == every[0]["item_id"]
    assert sorted(r["retrieval_logit"] for r in every) == pytest.approx(
        sorted(retrieval_logits[0]), abs=1e-6)
    # A dominant retrieval weight gives back retrieval's own order.
    cfg.rerank.retrieval_weight = 1e6
    fused = recommend_lib.RetrieveRerank(cfg).recommend(["a query"], [history], k=8)[0]
    assert [r["item_id"] for r in fused] == retrieved
    with pytest.raises(UserInputError, match="k must be in"):
        two_stage.recommend([""], [[]], k=9)


def test_a_reranker_missing_retrievable_items_is_refused(pipeline, trained_run, tmp_path):
    """A reranker trained on a catalogue without one of the items the retriever returns
    (its run copied with that item taken out, and its manifest rewritten)."""
    import json
    import shutil

    from trainer import runs
    from trainer.serving import recommend_lib

    rerank_dir = str(tmp_path / "reranker")
    shutil.copytree(trained_run[1], rerank_dir)
    path = os.path.join(rerank_dir, runs.CATALOGUE)
    with open(path) as f:
        catalogue = json.load(f)
    catalogue.pop(sorted(catalogue)[0])
    with open(path, "w") as f:
        json.dump(catalogue, f)
    runs.write_manifest(rerank_dir)
    with pytest.raises(UserInputError, match="lacks 1 of the"):
        recommend_lib.RetrieveRerank(config_lib.load_pipeline(
            pipeline, [f"rerank.model_dir={rerank_dir}"]))


def test_recommend_command_with_a_pipeline(pipeline, trained_two_tower_run, capsys):
    from trainer import task

    history = ItemIndex.load(trained_two_tower_run[0]).item_ids[:2]
    assert task.main(["recommend", "--pipeline", pipeline, "--history", ",".join(history),
                      "--set", "k=3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("rank\titem_id")
    assert [line.split("\t")[0] for line in lines[1:]] == ["1", "2", "3"]
    assert task.main(["recommend", "--pipeline", pipeline, "--set", "rerank.nope=1"]) == 2
    assert "rerank.nope" in capsys.readouterr().err


def test_recommend_explain_gives_one_faithful_record_per_item(trained_two_tower_run):
    """--explain: each recommended item's explanation is of the model that ranked it: its
    score is that item's click probability, its rank is its place in the list, and the
    history attributions name the user's own history items."""
    from trainer.serving import recommend_lib

    recommender = recommend_lib.Recommender(trained_two_tower_run[0])
    history = recommender.index.item_ids[:3]
    top = recommender.recommend(["a query"], [history], k=3)[0]
    records = recommender.explain("a query", history, [r["item_id"] for r in top],
                                  shapley_permutations=4)
    assert [r["example"]["candidate_id"] for r in records] == [r["item_id"] for r in top]
    for rank, (item, record) in enumerate(zip(top, records), 1):
        assert record["score"] == pytest.approx(item["click_probability"], abs=1e-4)
        assert record["rank"] == rank and record["impression_size"] == 3
        assert [h["item_id"] for h in record["history"]] == history  # newest first
        assert len(record["history_attributions"]["shapley"]) == len(history)
        assert record["sentence"]


def test_recommend_command_explains_with_a_pipeline(pipeline, trained_two_tower_run, capsys):
    from trainer import task

    history = ItemIndex.load(trained_two_tower_run[0]).item_ids[:2]
    assert task.main(["recommend", "--pipeline", pipeline, "--history", ",".join(history),
                      "--k", "2", "--explain"]) == 0
    out = capsys.readouterr().out
    why = out.split("why (")[1].strip().splitlines()[1:]
    assert [line.split("\t")[0] for line in why] == ["1", "2"]
    assert all(len(line.split("\t")[2]) > 20 for line in why)
