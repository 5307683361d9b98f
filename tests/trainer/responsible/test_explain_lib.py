"""``explain`` on a trained micro run: the output contract, the SavedModel's explain
signature, and bad input refused before anything is written."""

import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from bert_recommender.explainability import token_attributions
from bert_recommender.explainability.pair_scorer import PairScorer
from tests.explainability.test_report import parse
from trainer.responsible import explain_lib
from trainer.serving import export
from trainer import runs, task
from trainer.training import train_lib
from trainer.errors import RunDirError

ISSUE_KEYS = {"comprehensiveness", "sufficiency", "aopc", "deletion_auc", "insertion_auc",
              "truth_precision@5", "seconds_per_example"}


@pytest.fixture(scope="module")
def explained_run(trained_run, tmp_path_factory):
    """A copy of the shared run, explained once with every method."""
    _, source, _ = trained_run
    model_dir = str(tmp_path_factory.mktemp("explain") / "run")
    shutil.copytree(source, model_dir)
    methods = ["integrated_gradients", "gradient_x_input", "attention_rollout", "occlusion",
               "lime", "leave_one_out", "shapley"]
    try:
        import shap  # noqa: F401
        methods.append("shap")
    except ImportError:
        pass
    summary = explain_lib.explain(model_dir, num_examples=4, methods=methods, progress=False)
    return model_dir, summary, methods


def test_outputs_contract(explained_run):
    model_dir, summary, methods = explained_run
    out = os.path.join(model_dir, "explanations")
    assert sorted(os.listdir(out)) == ["explanations.jsonl", "faithfulness.json",
                                       "report.html"]
    with open(os.path.join(out, "faithfulness.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(summary))
    token_methods = [m for m in methods if m not in ("leave_one_out", "shapley")]
    assert set(saved["methods"]) == set(token_methods) | {"random"}
    for method in token_methods:
        assert ISSUE_KEYS <= set(saved["methods"][method]), method
        assert saved["methods"][method]["examples"] == 4
        assert "comprehensiveness" in saved["methods"][method]["beats_random"]
    assert saved["methods"]["integrated_gradients"]["completeness_error"] < 0.01
    assert set(saved["history_methods"]) == {"leave_one_out", "shapley", "random"}

    with open(os.path.join(out, "explanations.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 4
    assert explain_lib.read_explanations(model_dir) == records
    for record in records:
        assert record["rank"] == 1  # --select top explains each impression's top candidate
        assert record["sentence"].startswith("Recommended '")
        for values in record["token_attributions"].values():
            assert len(values) == len(record["words"])
        for values in record["history_attributions"].values():
            assert len(values) == len(record["history"])
        assert record["counterfactual"]["criterion"]
        assert set(record["truth"]) == {"reason_tokens", "reason_history"}

    with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
        page = f.read()
    parse(page)  # well-formed
    assert page.startswith("<!DOCTYPE html>")
    assert records[0]["sentence"].split("'")[1] in page

    events = os.path.join(model_dir, "tensorboard", "explanations")
    tags = {value.tag for name in os.listdir(events)
            for event in tf.compat.v1.train.summary_iterator(os.path.join(events, name))
            for value in event.summary.value}
    assert {"faithfulness", "explanation"} <= tags


def test_cases_rebuild_the_user_side_the_model_was_trained_on(trained_run):
    cfg, model_dir, _ = trained_run
    prepared = train_lib.prepare_data(cfg, model_dir)
    compose = explain_lib.make_compose(cfg.data.max_history)
    table = prepared.tables["test"]
    examples = prepared.splits["test"]
    for index in range(len(examples)):
        case = explain_lib.make_case(examples[index], [], prepared.catalogue, cfg, index)
        assert case.user_text(compose) == table.user_text[index]
        assert case.candidate_text == table.item_text[index]


def test_cli_prints_the_table(trained_run, tmp_path, capsys):
    _, source, _ = trained_run
    model_dir = str(tmp_path / "run")
    shutil.copytree(source, model_dir)
    code = task.main(["explain", "--model_dir", model_dir, "--num_examples", "2",
                      "--methods", "integrated_gradients,occlusion,lime,leave_one_out",
                      "--ig_baseline", "mask", "--lime_samples", "64"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "occlusion" in printed and "leave_one_out" in printed and "random" in printed
    assert "\nlime " in printed  # opt-in token methods are accepted by the CLI
    assert os.path.exists(os.path.join(model_dir, "explanations", "report.html"))
    with open(os.path.join(model_dir, "explanations", "faithfulness.json")) as f:
        saved = json.load(f)
    assert saved["ig_baseline"] == "mask" and saved["lime_samples"] == 64
    assert saved["methods"]["integrated_gradients"]["completeness_error"] < 0.01
    # Adaptive steps by default, and the printed summary says how many did not converge.
    assert saved["ig_tolerance"] == 0.01 and saved["ig_max_steps"] == 512
    assert saved["methods"]["integrated_gradients"]["ig_not_converged"] == 0
    assert "0 of 2 examples not converged under 1%" in printed


@pytest.mark.parametrize("args, message", [
    (["--num_examples", "0"], "--num_examples must be at least 1"),
    (["--methods", "integrated_gradients,anchors"], "unknown explanation method"),
    (["--methods", "lime", "--lime_samples", "1"], "lime_samples must be an integer >= 2"),
    (["--ig_steps", "64", "--ig_max_steps", "32"],
     "--ig_max_steps: ig_max_steps (32) must be at least ig_steps (64)"),
])
def test_bad_arguments_fail_before_writing(trained_run, tmp_path, capsys, args, message):
    _, source, _ = trained_run
    model_dir = str(tmp_path / "run")
    shutil.copytree(source, model_dir)
    assert task.main(["explain", "--model_dir", model_dir] + args) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(model_dir, "explanations"))


def test_runs_that_cannot_be_explained_are_refused(trained_run, tmp_path, capsys):
    _, source, _ = trained_run
    assert task.main(["explain", "--model_dir", str(tmp_path / "missing")]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err

    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(source, unfinished)
    os.remove(os.path.join(unfinished, "manifest.json"))  # training writes it last
    assert task.main(["explain", "--model_dir", unfinished]) == 2
    assert "did not finish training" in capsys.readouterr().err

    id_model = str(tmp_path / "mf")
    shutil.copytree(source, id_model)
    path = os.path.join(id_model, "config.yaml")
    with open(path) as f:
        raw = yaml.safe_load(f)
    raw["model"]["kind"] = "mf"
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    runs.write_manifest(id_model)  # an MF run, as far as its files tell
    assert task.main(["explain", "--model_dir", id_model]) == 2
    assert "explain needs a text model" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(id_model, "explanations"))


def test_saved_model_explain_signature_matches_eager_integrated_gradients(trained_run):
    cfg, model_dir, _ = trained_run
    explain = export.load_serving_fn(os.path.join(model_dir, "export"), "explain")
    users = ["looking for a laptop ; acme wireless laptop", "show me a good phone"]
    items = ["globex wireless laptop pro", "initech phone"]
    out = explain(user_text=tf.constant(users), item_text=tf.constant(items))
    attributions = out["attributions"].numpy()
    difference = (out["click_probability"] - out["baseline_probability"]).numpy()
    np.testing.assert_allclose(attributions.sum(axis=1), difference,
                               atol=0.01 * np.abs(difference).max() + 1e-7)

    model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
    scorer = PairScorer(model, runs.open_run(model_dir).featurizer)
    ids, segments = scorer.pack(users, items)
    eager = token_attributions.integrated_gradients(scorer, ids, segments, steps=32)
    np.testing.assert_allclose(attributions, eager["attributions"], atol=1e-5)
    tokens = out["tokens"].numpy().astype(str)
    assert tokens.shape == ids.shape and tokens[0, 0] == "[CLS]"
    assert list(tokens[0]) == scorer.tokens(ids[0])


def test_shap_without_the_extra_is_refused_before_writing(trained_run, tmp_path, capsys,
                                                          monkeypatch):
    _, source, _ = trained_run
    model_dir = str(tmp_path / "run")
    shutil.copytree(source, model_dir)
    monkeypatch.setitem(sys.modules, "shap", None)  # makes `import shap` raise ImportError
    assert task.main(["explain", "--model_dir", model_dir, "--methods", "shap"]) == 2
    assert 'pip install -e ".[explain]"' in capsys.readouterr().err
    assert not os.path.exists(os.path.join(model_dir, "explanations"))


def test_reading_explanations_of_an_unexplained_run_says_what_to_run(tmp_path):
    with pytest.raises(RunDirError, match="run `python -m trainer.task explain"):
        explain_lib.read_explanations(str(tmp_path))


def test_two_tower_run_trains_exports_and_explains(trained_two_tower_run, tmp_path):
    """Train (CLI) -> metrics, export with the two-tower signatures -> explain with every
    method: attention rollout is reported as not applicable, the others are scored."""
    source, results = trained_two_tower_run
    assert 0.0 <= results["test"]["auc"] <= 1.0
    model_dir = str(tmp_path / "run")
    shutil.copytree(source, model_dir)
    signatures = tf.saved_model.load(os.path.join(model_dir, "export")).signatures
    assert {"serving_default", "user_embedding", "item_embedding", "explain"} <= set(
        signatures)

    methods = ["integrated_gradients", "gradient_x_input", "attention_rollout", "occlusion",
               "lime", "leave_one_out", "shapley"]
    summary = explain_lib.explain(model_dir, num_examples=3, methods=methods, progress=False)
    assert "attention_rollout" in summary["not_applicable"]
    assert set(summary["methods"]) == {"integrated_gradients", "gradient_x_input",
                                       "occlusion", "lime", "random"}
    assert summary["methods"]["integrated_gradients"]["completeness_error"] < 0.02
    assert set(summary["history_methods"]) == {"leave_one_out", "shapley", "random"}
    records = explain_lib.read_explanations(model_dir)
    assert len(records) == 3
    for record in records:
        assert record["rank"] == 1
        assert "attention_rollout" in record["not_applicable"]
        assert record["sentence"].startswith("Recommended '")
        for values in record["token_attributions"].values():
            assert len(values) == len(record["words"])
        assert record["counterfactual"]["criterion"]
