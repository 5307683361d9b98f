"""Hyperparameter search: the search-space checks, and real keras-tuner searches (random under
MirroredStrategy from the CLI, Bayesian and Hyperband in process) whose best config trains."""

import glob
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml

from tests.harness import MICRO_OVERRIDES, REPO
from trainer import config as config_lib
from trainer.training import tune_lib
from trainer.errors import ConfigError

TINY = os.path.join(REPO, "configs", "tiny.yaml")


def load(*overrides):
    return config_lib.load_config(TINY, MICRO_OVERRIDES + list(overrides))


def with_space(*entries):
    return load("tune.space=" + json.dumps(list(entries)))


def test_every_shipped_config_has_a_valid_search_space():
    for path in glob.glob(os.path.join(REPO, "configs", "*.yaml")):
        if config_lib.is_pipeline_config(path):
            continue
        cfg = config_lib.load_config(path)
        if cfg.tune.space:
            assert tune_lib.check_space(cfg), path


@pytest.mark.parametrize("entry, message", [
    ({"key": "train.nope", "type": "float", "min": 0.1, "max": 0.2}, r"tune.space\[0\].key"),
    ({"key": "data.item_text_fields", "type": "choice", "values": [["title"]]},
     r"scalar config field"),
    ({"key": "tune.max_trials", "type": "int", "min": 1, "max": 3}, r"scalar config field"),
    ({"key": "train.learning_rate", "type": "int", "min": 1, "max": 3}, r"use type float"),
    ({"key": "model.pooling", "type": "float", "min": 0.0, "max": 1.0}, r"use type choice"),
    ({"key": "train.learning_rate", "type": "float", "min": 0.1, "max": 0.01}, r"below max"),
    ({"key": "train.learning_rate", "type": "float", "min": 0.0, "max": 0.1,
      "sampling": "log"}, r"log sampling needs min > 0"),
    ({"key": "train.learning_rate", "type": "float", "min": 0.01, "max": 0.1,
      "sampling": "cubic"}, r"linear or log"),
    ({"key": "model.pooling", "type": "choice", "values": ["cls", "max"]}, r"'max' is not one"),
    ({"key": "model.num_layers", "type": "choice", "values": [1, "two"]}, r"expects int"),
    ({"key": "model.num_layers", "type": "int", "min": 1, "max": 2, "typo": 1},
     r"unknown fields \['typo'\]"),
    ({"key": "model.num_layers", "type": "range", "min": 1, "max": 2}, r"float, int or choice"),
])
def test_bad_space_entries_name_the_entry(entry, message):
    with pytest.raises(ConfigError, match=message):
        with_space(entry)


def test_a_field_listed_twice_is_refused():
    entry = {"key": "model.num_layers", "type": "int", "min": 1, "max": 2}
    with pytest.raises(ConfigError, match="appears twice"):
        with_space(entry, entry)


def test_a_multi_worker_search_is_refused_before_writing(tmp_path, monkeypatch):
    class FakeMultiWorker:
        pass

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorker)
    with pytest.raises(ConfigError, match="tune runs in one process"):
        tune_lib.tune(load(), str(tmp_path / "run"), strategy=FakeMultiWorker())
    assert not (tmp_path / "run").exists()


def test_space_values_that_break_the_config_fail_before_the_search(tmp_path):
    cfg = with_space({"key": "model.hidden_dim", "type": "choice", "values": [16, 15]})
    with pytest.raises(ConfigError, match=r"model.hidden_dim=15 makes an invalid config.*"
                                          r"divisible"):
        tune_lib.tune(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, entry, message", [
    ([], None, "tune.space' is empty"),
    (["model.pretrained=/some/checkpoint", "model.normalize_first=false"],
     {"key": "model.num_layers", "type": "int", "min": 1, "max": 2}, "fixed by the pretrained"),
    ([], {"key": "data.synthetic.num_users", "type": "int", "min": 10, "max": 20},
     "changes the validation examples"),
    ([], {"key": "data.validation_fraction", "type": "float", "min": 0.1, "max": 0.2},
     "changes the validation examples"),
])
def test_searches_that_cannot_be_compared_are_refused(overrides, entry, message):
    space = [entry] if entry else []
    cfg = load(*overrides, "tune.space=" + json.dumps(space))
    with pytest.raises(ConfigError, match=message):
        tune_lib.check_space(cfg)


def test_trial_config_replaces_exactly_the_sampled_fields():
    cfg = load()
    trial = tune_lib.trial_config(cfg, {"train.learning_rate": 1e-5, "model.pooling": "cls",
                                        "data.max_history": 2})
    assert (trial.train.learning_rate, trial.model.pooling, trial.data.max_history) == \
        (1e-5, "cls", 2)
    changed = config_lib.diff_keys(config_lib.to_dict(cfg), config_lib.to_dict(trial))
    assert sorted(changed) == ["data.max_history", "model.pooling", "train.learning_rate"]


def _event_tags(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "**", "events.out.tfevents.*"),
                          recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update((os.path.relpath(os.path.dirname(path), directory), v.tag)
                        for v in event.summary.value)
    return tags


def test_cli_random_search_under_mirrored_strategy_and_its_best_config_trains(tmp_path):
    """The issue's acceptance check: `tune` with 3 trials of the tiny config (here shrunk
    further) completes under a 2-replica strategy, and `train` takes its best_config.yaml."""
    model_dir = tmp_path / "tune"
    args = [sys.executable, "-m", "trainer.task", "tune", "--config", TINY,
            "--model_dir", str(model_dir), "--set", "tune.max_trials=3",
            "--set", "runtime.strategy=mirrored", "--set", "runtime.logical_cpus=2"]
    for override in MICRO_OVERRIDES:
        args += ["--set", override]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best: trial" in result.stdout and "best_config.yaml" in result.stdout

    with open(model_dir / "tune_results.json") as f:
        results = json.load(f)
    trials = results["trials"]
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials)
    scores = [t["score"] for t in trials]
    assert scores == sorted(scores, reverse=True) and results["best"] == trials[0]
    assert all(0.0 <= s <= 1.0 for s in scores)
    # Each trial sampled its own values inside the declared space.
    space = {e["key"]: e for e in config_lib.tune_space(load())}
    for trial in trials:
        for key, value in trial["values"].items():
            entry = space[key]
            if entry["type"] == "choice":
                assert value in entry["values"]
            else:
                assert entry["min"] <= value <= entry["max"]
    assert len({json.dumps(t["values"], sort_keys=True) for t in trials}) == 3

    # HParams: the experiment summary plus each trial's hyperparameters and scalars.
    tags = _event_tags(str(model_dir / "tensorboard"))
    assert (".", "_hparams_/experiment") in tags
    for trial in trials:
        run = os.path.join(trial["trial_id"], "execution0")
        assert (run, "_hparams_/session_start_info") in tags
        assert (os.path.join(run, "validation"), "epoch_auc") in tags

    best = config_lib.load_config(str(model_dir / "best_config.yaml"))
    for key, value in trials[0]["values"].items():
        group, *rest = key.split(".")
        node = getattr(best, group)
        for part in rest:
            node = getattr(node, part)
        assert node == pytest.approx(value)
    # `train --config best_config.yaml`, as a user runs it (its own process: the config
    # keeps runtime.logical_cpus=2, which must be applied before TensorFlow starts). The
    # export is not what this checks, and is tested on its own elsewhere.
    result = subprocess.run([sys.executable, "-m", "trainer.task", "train", "--config",
                             str(model_dir / "best_config.yaml"), "--model_dir",
                             str(tmp_path / "best_run"), "--set", "train.export=false"],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "best_run" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["test"]["examples"] > 0 and metrics["train"]["replicas"] == 2


def test_rerunning_a_finished_search_resumes_instead_of_retraining(tmp_path):
    cfg = load("tune.max_trials=1", "tune.algorithm=bayesian", "train.steps_per_epoch=2")
    first = tune_lib.tune(cfg, str(tmp_path / "run"))
    again = tune_lib.tune(cfg, str(tmp_path / "run"))
    assert again["trials"] == first["trials"]
    other = load("tune.max_trials=2", "tune.algorithm=bayesian", "train.steps_per_epoch=2")
    with pytest.raises(Exception, match="different config"):
        tune_lib.tune(other, str(tmp_path / "run"))


def test_hyperband_continues_promoted_trials(tmp_path):
    cfg = load("tune.algorithm=hyperband", "tune.max_trials=4", "train.epochs=3",
               "train.steps_per_epoch=2")
    results = tune_lib.tune(cfg, str(tmp_path / "run"))
    trials = results["trials"]
    assert len(trials) == 4 and all(t["score"] is not None for t in trials)
    # Hyperband's first bracket trains several configs for 1 epoch, then continues the best
    # for the full budget of train.epochs with the same values.
    assert {t["epochs"] for t in trials} == {1, 3}
    promoted = [t for t in trials if t["epochs"] == 3]
    assert any(p["values"] == t["values"] for p in promoted for t in trials
               if t["epochs"] == 1)
    with open(tmp_path / "run" / "best_config.yaml") as f:
        assert yaml.safe_load(f.read().split("\n", 1)[1])["tune"]["algorithm"] == "hyperband"
