"""End to end: train on tiny synthetic data and check the run directory's output contract."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from tests.harness import REPO
from trainer import config as config_lib
from trainer import runs, task
from trainer.serving import export
from trainer.data import input_pipeline
from trainer.data import prepared as prepared_lib
from trainer.training import train_lib
from trainer.evaluation import scoring
from trainer.data.canonical import DataError

RANKING_KEYS = {"auc", "logloss", "group_auc", "mrr", "ndcg@5", "ndcg@10", "hr@10", "examples"}


def test_output_contract(trained_run):
    cfg, model_dir, results = trained_run
    for name in ("config.yaml", "tensorboard", "checkpoints", "export", "metrics.json",
                 "model.keras", "vocab.txt", "data_info.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    with open(os.path.join(model_dir, "metrics.json")) as f:
        saved = json.load(f)
    assert RANKING_KEYS | {"oracle_auc"} <= set(saved["test"])
    assert RANKING_KEYS <= set(saved["validation"])
    assert saved["test"]["examples"] == 24 * 3
    assert 0.5 < saved["test"]["oracle_auc"] <= 1.0
    assert saved["train"]["epochs_run"] == 2
    with open(os.path.join(model_dir, "config.yaml")) as f:
        assert config_lib.config_from_dict(yaml.safe_load(f)) == cfg
    # Nothing temporary is left behind.
    assert not [n for n in os.listdir(model_dir) if ".tmp" in n or ".old-" in n]
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # removed after success


def _scalar_tags(event_dir):
    tags = set()
    for name in os.listdir(event_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def test_tensorboard_has_loss_auc_and_learning_rate(trained_run):
    _, model_dir, _ = trained_run
    train_tags = _scalar_tags(os.path.join(model_dir, "tensorboard", "train"))
    val_tags = _scalar_tags(os.path.join(model_dir, "tensorboard", "validation"))
    assert {"epoch_loss", "epoch_auc", "epoch_learning_rate"} <= train_tags
    assert {"epoch_loss", "epoch_auc"} <= val_tags


def test_evaluate_reproduces_metrics(trained_run):
    _, model_dir, results = trained_run
    again = train_lib.evaluate(model_dir)
    for split in ("validation", "test"):
        for key in ("auc", "logloss", "ndcg@10"):
            assert again[split][key] == pytest.approx(results[split][key], abs=1e-5)


def test_export_serves_the_trained_model(trained_run):
    cfg, model_dir, _ = trained_run
    prepared = train_lib.prepare_data(cfg, model_dir)
    table = prepared.tables["test"]
    model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
    packer = runs.open_run(model_dir).featurizer
    logits = scoring.predict_logits(model, table, packer, 16)
    serve = export.load_serving_fn(os.path.join(model_dir, "export"))
    out = serve(user_text=tf.constant(table.user_text.astype(str)),
                item_text=tf.constant(table.item_text.astype(str)))
    np.testing.assert_allclose(out["logit"].numpy(), logits, atol=1e-5)


def test_same_config_resumes_and_different_config_is_refused(trained_run):
    cfg, model_dir, _ = trained_run
    assert train_lib.check_model_dir(model_dir, cfg) is True
    other = config_lib.config_from_dict(
        {**config_lib.to_dict(cfg), "train": {**config_lib.to_dict(cfg)["train"],
                                              "learning_rate": 0.5}})
    before = sorted(os.listdir(model_dir))
    with pytest.raises(train_lib.RunDirError, match=r"config.yaml: .*train.learning_rate"):
        train_lib.train(other, model_dir)
    assert sorted(os.listdir(model_dir)) == before


def test_bad_data_fails_before_anything_is_written(tmp_path, tiny_config):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "items.csv").write_text("item_id,title\na,red laptop\nb,blue phone\n")
    (data_dir / "impressions.csv").write_text(
        "user_id,impression_id,history,candidate,label\nu,1,a,b,1\nu,1,a,c,0\n")
    cfg = tiny_config("data.source=files", f"data.data_dir={data_dir}")
    model_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"impressions.csv:3: candidate id 'c'"):
        train_lib.train(cfg, str(model_dir))
    assert not model_dir.exists()


@pytest.mark.parametrize("labels, loss, message", [
    ("0 0 0 0", "bce", "no positive label"),
    ("0 0 0 0", "softmax", "no positive label"),
    ("1 1 1 1", "bce", "no negative label .* train.loss=softmax"),
])
def test_a_train_split_without_both_labels_is_refused(tmp_path, tiny_config, labels, loss,
                                                      message):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "items.csv").write_text("item_id,title\na,red laptop\nb,blue phone\n")
    rows = [f"u{k},{k},a,b,{label},{'train' if k < 2 else 'validation'}"
            for k, label in enumerate(labels.split())]
    (data_dir / "impressions.csv").write_text(
        "user_id,impression_id,history,candidate,label,split\n" + "\n".join(rows) + "\n")
    cfg = tiny_config("data.source=files", f"data.data_dir={data_dir}", f"train.loss={loss}",
                      "model.kind=two_tower")
    model_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"impressions.csv: the train split has " + message):
        train_lib.train(cfg, str(model_dir))
    assert not model_dir.exists()


def test_an_evaluation_split_with_one_label_is_reported():
    def table(labels):
        labels = np.asarray(labels, np.float32)
        return input_pipeline.PairTable(
            user_text=np.array(["u"] * len(labels), dtype=object),
            item_text=np.array(["i"] * len(labels), dtype=object), label=labels,
            group=np.arange(len(labels)), user_index=np.zeros(len(labels), np.int32),
            item_index=np.zeros(len(labels), np.int32))

    cfg = config_lib.load_config(os.path.join(REPO, "configs", "tiny.yaml"))
    warnings = prepared_lib.check_labels(cfg, {"train": table([1, 0]), "validation": table([1, 0]),
                                            "test": table([0, 0, 0])}, "imp.csv")
    assert warnings == ["the test split has only label 0 (3 rows): its AUC is undefined "
                        "(reported as nan)"]
    assert prepared_lib.check_labels(cfg, {"train": table([1, 0]), "validation": table([0, 1]),
                                        "test": table([])}, "imp.csv") == []


def test_users_own_files_train_without_export_and_export_later(tmp_path, tiny_config,
                                                               capsys):
    """A user's own CSV files without a split column train end to end (hash split). With
    train.export=false the run is finished and verified without served models (an
    earlier run's are removed), `predict` says how to write them, and `export` does."""
    rng = np.random.default_rng(0)
    words = ["red", "blue", "laptop", "phone", "fast", "cheap", "light", "big"]
    items = ["item_id,title,categories"] + [
        f"i{k},{' '.join(rng.choice(words, 3))},{rng.choice(['tech', 'home'])}"
        for k in range(30)]
    rows = ["user_id,impression_id,history,candidate,label,query"]
    for imp in range(60):
        hist = " ".join(f"i{k}" for k in rng.choice(30, 3, replace=False))
        for c, label in zip(rng.choice(30, 3, replace=False), (1, 0, 0)):
            rows.append(f"u{imp % 10},{imp},{hist},i{c},{label},{'a query' if imp % 2 else ''}")
    (tmp_path / "items.csv").write_text("\n".join(items) + "\n")
    (tmp_path / "impressions.csv").write_text("\n".join(rows) + "\n")
    cfg = tiny_config("data.source=files", f"data.data_dir={tmp_path}",
                      "data.validation_fraction=0.2", "data.test_fraction=0.2",
                      "train.export=false")
    model_dir = tmp_path / "run"
    (model_dir / "export").mkdir(parents=True)
    (model_dir / "export" / "saved_model.pb").write_text("an earlier run's")
    results = train_lib.train(cfg, str(model_dir))
    assert "oracle_auc" not in results["test"]
    assert results["test"]["examples"] > 0

    assert not (model_dir / "export").exists() and not (model_dir / "export_tokens").exists()
    runs.verify(str(model_dir))
    predict = ["predict", "--model_dir", str(model_dir), "--user_text", "red laptop",
               "--item_text", "blue phone"]
    capsys.readouterr()
    assert task.main(predict) == 2
    err = capsys.readouterr().err
    assert "train.export=false" in err and f"export --model_dir {model_dir}" in err
    assert task.main(["export", "--model_dir", str(model_dir)]) == 0
    runs.verify(str(model_dir))
    assert (model_dir / "export" / "saved_model.pb").is_file()
    assert (model_dir / "export_tokens").is_dir()
    assert task.main(predict) == 0


@pytest.mark.parametrize("kind", ["mf", "popularity"])
def test_baselines_train_through_the_same_library(tmp_path, tiny_config, kind):
    results = train_lib.train(tiny_config(f"model.kind={kind}"), str(tmp_path / kind))
    assert RANKING_KEYS <= set(results["test"])
    assert os.path.exists(tmp_path / kind / "export" / "saved_model.pb")
    assert results["train"]["epochs_run"] == (0 if kind == "popularity" else 1)


def test_format_metrics_table():
    table = train_lib.format_metrics_table(
        {"validation": {"auc": 0.75, "examples": 10}, "test": {"auc": float("nan"),
                                                                "examples": 12}})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "validation", "test"]
    assert lines[1].split() == ["auc", "0.7500", "nan"]
    assert lines[2].split() == ["examples", "10", "12"]


def test_format_comparison_table():
    table = train_lib.format_comparison_table(
        {"bert": {"test": {"auc": 0.7, "hr@10": 0.5, "examples": 20}},
         "popularity": {"test": {"auc": 0.6, "examples": 20}}}, keys=("auc", "hr@10",
                                                                      "examples"))
    assert [line.split() for line in table.splitlines()] == [
        ["model", "auc", "hr@10", "examples"], ["bert", "0.7000", "0.5000", "20"],
        ["popularity", "0.6000", "-", "20"]]


def test_warmup_linear_decay_schedule():
    schedule = train_lib.WarmupLinearDecay(peak=1.0, warmup_steps=10, total_steps=110)
    values = [float(schedule(step)) for step in (0, 5, 10, 60, 110, 200)]
    assert values == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])


def test_predict_command_uses_the_export(trained_run, capsys):
    from trainer import task
    cfg, model_dir, _ = trained_run
    prepared = train_lib.prepare_data(cfg, model_dir)
    table = prepared.tables["test"]
    user, item = str(table.user_text[0]), str(table.item_text[0])
    assert task.main(["predict", "--model_dir", model_dir, "--user_text", user,
                      "--item_text", item]) == 0
    printed = float(capsys.readouterr().out.split("\t")[0])
    model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
    logit = scoring.predict_logits(model, table, runs.open_run(model_dir).featurizer,
                                     16)[0]
    assert printed == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-4)


def test_mixed_precision_keeps_the_click_head_float32(tmp_path, tiny_config):
    cfg = tiny_config("runtime.precision=mixed_bfloat16", "model.kind=cross_encoder")
    try:
        results = train_lib.train(cfg, str(tmp_path / "bf16"))
        model = keras.models.load_model(str(tmp_path / "bf16" / "model.keras"))
        assert model.backbone.transformer_layers[0].compute_dtype == "bfloat16"
        assert model.click_head.compute_dtype == "float32"
        batch = train_lib.make_packer(cfg, str(tmp_path / "bf16" / "vocab.txt"))(
            tf.constant(["a b"]), tf.constant(["c"]))
        assert model(batch).dtype == "float32"
        assert np.isfinite(results["test"]["logloss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_two_tower_scores_in_float32(tmp_path, tiny_config):
    cfg = tiny_config("runtime.precision=mixed_bfloat16", "model.kind=two_tower",
                      "model.item_ids=true", "model.user_layers=1")
    try:
        results = train_lib.train(cfg, str(tmp_path / "bf16"))
        model = keras.models.load_model(str(tmp_path / "bf16" / "model.keras"))
        assert model.item_encoder.transformer_layers[0].compute_dtype == "bfloat16"
        assert np.isfinite(results["test"]["logloss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_unknown_precision_is_a_config_error(tiny_config):
    with pytest.raises(config_lib.ConfigError, match="runtime.precision"):
        tiny_config("runtime.precision=float8")


def _tags_by_step(event_dir):
    found = {}
    for name in os.listdir(event_dir):
        path = os.path.join(event_dir, name)
        if not name.startswith("events."):
            continue
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, set()).add(event.step)
    return found


def test_run_writes_curves_text_projector_and_plots(trained_run):
    cfg, model_dir, results = trained_run
    val_tags = _tags_by_step(os.path.join(model_dir, "tensorboard", "validation"))
    # One PR curve per epoch (steps 0, 1) and the final, restored-best model's at step 2.
    assert val_tags["pr_curve"] == {0, 1, 2}
    assert {0, 1, 2} <= val_tags["predicted_probability"]
    assert {"scored_examples", "calibration"} <= set(val_tags)
    projector_dir = os.path.join(model_dir, "tensorboard", "projector")
    with open(os.path.join(projector_dir, "metadata.tsv")) as f:
        rows = f.read().splitlines()
    assert len(rows) == 1 + cfg.data.synthetic.num_items  # header + one row per item
    assert os.path.exists(os.path.join(projector_dir, "projector_config.pbtxt"))
    for png in ("calibration.png", "score_histogram.png"):
        with open(os.path.join(model_dir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
    calibration = results["reports"]["calibration"]
    assert calibration["examples"] == results["validation"]["examples"]
    assert sum(b["count"] for b in calibration["bins"]) == calibration["examples"]


def test_read_scalars_returns_every_epoch(trained_run):
    from trainer.evaluation import run_reports

    _, model_dir, results = trained_run
    scalars = run_reports.read_scalars(os.path.join(model_dir, "tensorboard"))
    losses = scalars["validation"]["epoch_loss"]
    assert [step for step, _ in losses] == [0, 1]
    assert [v for _, v in losses] == pytest.approx(results["train"]["history"]["val_loss"])
    assert "epoch_learning_rate" in run_reports.format_scalars(scalars)


def test_profile_steps_trace_the_requested_steps(tmp_path, tiny_config):
    cfg = tiny_config("runtime.profile_steps=[2, 3]", "train.steps_per_epoch=4",
                      "train.export=false")
    train_lib.train(cfg, str(tmp_path / "run"))
    traces = [p for p in tf.io.gfile.glob(str(tmp_path / "run" / "tensorboard" / "train" /
                                              "plugins" / "profile" / "*" / "*"))
              if p.endswith(".xplane.pb")]
    assert traces


@pytest.mark.parametrize("value", ["[3]", "[3, 2]", "[0, 2]", "[1.5, 2]"])
def test_bad_profile_steps_name_the_key(tiny_config, value):
    with pytest.raises(config_lib.ConfigError, match="runtime.profile_steps"):
        tiny_config(f"runtime.profile_steps={value}")


@pytest.mark.parametrize("metric", ["group_auc", "ndcg@10"])
def test_early_stopping_follows_a_per_group_validation_metric(tmp_path, tiny_config, metric):
    cfg = tiny_config("model.kind=two_tower", "train.epochs=2",
                      f"train.early_stopping_metric={metric}")
    prepared = train_lib.prepare_data(cfg, str(tmp_path))
    packer = train_lib.make_packer(cfg, prepared.vocabulary, prepared)
    strategy = tf.distribute.get_strategy()
    model = train_lib.build_model(cfg, packer, prepared.ids, prepared.tables["train"])
    fitted = train_lib.fit_model(cfg, model, prepared.tables, packer, strategy, verbose=0)
    history = fitted["history"]
    for key in ("val_auc", "val_loss", "val_group_auc", "val_ndcg@10"):
        assert len(history[key]) == fitted["epochs_run"] == 2, key
    # The clocks: seconds since fit began after each epoch's validation, and each epoch's
    # training steps alone (the ranking validation runs after them).
    wall = history["wall_seconds"]
    assert len(wall) == 2 and 0 < wall[0] < wall[1]
    assert 0 < history["epoch_train_seconds"][0] <= wall[0]
    assert 0 < history["epoch_train_seconds"][1] <= wall[1] - wall[0]
    # The logged value is the metric of the weights at that epoch: the model kept at the
    # end (best or last) scores one of the logged values.
    scored = scoring.evaluate_tables(model, prepared.tables, packer, 64)["validation"]
    assert min(abs(scored[metric] - v) for v in history[f"val_{metric}"]) < 1e-6


def test_early_stopping_can_follow_the_full_ranking_of_the_validation_positives(
        tmp_path, tiny_config):
    """full_ndcg@10: each validation positive against the whole catalogue, no item excluded
    but column 0; the kept model scores one of the logged values."""
    from trainer import kinds
    from trainer.evaluation import metrics

    cfg = tiny_config("model.kind=two_tower", "train.epochs=2",
                      "train.early_stopping_metric=full_ndcg@10")
    prepared = train_lib.prepare_data(cfg, str(tmp_path))
    packer = train_lib.make_packer(cfg, prepared.vocabulary, prepared)
    item_text = prepared.ids.item_texts(prepared.catalogue, cfg.data.item_text_fields)
    model = train_lib.build_model(cfg, packer, prepared.ids, prepared.tables["train"])
    fitted = train_lib.fit_model(cfg, model, prepared.tables, packer,
                                 tf.distribute.get_strategy(), verbose=0, item_text=item_text)
    logged = fitted["history"]["val_full_ndcg@10"]
    assert len(logged) == len(fitted["history"]["val_ndcg@10"]) == fitted["epochs_run"] == 2
    validation = prepared.tables["validation"]
    positives = validation.subset(np.flatnonzero(validation.label > 0))
    logits = kinds.for_config(cfg).catalogue_logits(model, packer, positives, item_text, 64)
    exclude = np.zeros(logits.shape, dtype=bool)
    exclude[:, 0] = True
    ndcg = metrics.full_ranking_metrics(logits, positives.item_index, exclude=exclude)["ndcg@10"]
    assert min(abs(ndcg.mean() - v) for v in logged) < 1e-6
    assert 0.0 <= min(logged) and max(logged) <= 1.0

    with pytest.raises(config_lib.ConfigError, match="ranks the whole catalogue each epoch"):
        kinds.for_config(tiny_config("model.kind=cross_encoder",
                                     "train.early_stopping_metric=full_ndcg@10"))


def test_per_group_early_stopping_is_refused_under_multi_worker(tiny_config):
    with pytest.raises(config_lib.ConfigError, match="train.early_stopping_metric"):
        tiny_config("train.early_stopping_metric=group_auc", "runtime.strategy=multi_worker")
