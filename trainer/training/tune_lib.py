"""Hyperparameter search with keras-tuner over config fields (``python -m trainer.task tune``).

The search space is ``tune.space`` in the config (see :class:`trainer.config.TuneConfig`).
Each trial is the base config with the sampled fields replaced, validated like any config,
and trained through the one training library (``train_lib.prepare_data`` / ``build_model``
/ ``fit_model``) under the run's tf.distribute strategy; keras-tuner's RandomSearch,
BayesianOptimization or Hyperband oracle picks the values. ``tune(cfg, model_dir)`` leaves::

    config.yaml         the resolved base config (a rerun with the same config resumes)
    best_config.yaml    the base config with the best trial's values: `train --config` takes it
    tune_results.json   every trial's values, objective and status, best first
    tensorboard/        one run per trial (train/ and validation/ scalars) with its
                        hyperparameters for TensorBoard's HParams dashboard
    tuner/              keras-tuner's own state (oracle, per-trial best weights)
    data/               the generated data (synthetic source), shared by all trials
"""

from __future__ import annotations

import logging
import os

import keras
import keras_tuner
import tensorflow as tf
import yaml

from trainer import config as config_lib
from trainer import kinds
from trainer.training import distribute, train_lib
from trainer.io import atomic_write_text, write_json
from trainer.errors import ConfigError

log = logging.getLogger(__name__)

# Fields a pretrained checkpoint fixes: searching them would train the same model twice.
_ARCHITECTURE_KEYS = ("model.num_layers", "model.num_heads", "model.hidden_dim",
                      "model.intermediate_dim", "model.normalize_first",
                      "model.max_sequence_length")
# Data fields that change the validation examples themselves: trials would not compare.
_VALIDATION_CHANGING_KEYS = ("data.validation_fraction", "data.test_fraction",
                             "data.split_seed", "data.source", "data.synthetic.",
                             "data.movielens.eval_negatives", "data.movielens.seed",
                             "data.mind.")


def objective(cfg: config_lib.ExperimentConfig) -> keras_tuner.Objective:
    """The keras-tuner objective named by ``tune.objective`` (AUC up, loss down)."""
    name = cfg.tune.objective
    return keras_tuner.Objective(name, direction="max" if name.endswith("auc") else "min")


def define_space(hp: keras_tuner.HyperParameters, space: list[dict]) -> dict:
    """Registers ``space`` (checked ``tune.space`` entries) in ``hp``; returns key -> value."""
    values = {}
    for entry in space:
        key = entry["key"]
        if entry["type"] == "choice":
            values[key] = hp.Choice(key, entry["values"])
        elif entry["type"] == "int":
            values[key] = hp.Int(key, entry["min"], entry["max"], step=entry["step"],
                                 sampling=entry["sampling"])
        else:
            values[key] = hp.Float(key, entry["min"], entry["max"], step=entry["step"],
                                   sampling=entry["sampling"])
    return values


def trial_config(cfg: config_lib.ExperimentConfig, values: dict) -> config_lib.ExperimentConfig:
    """``cfg`` with the dotted ``values`` replaced, validated like any config (its kind's
    own checks included)."""
    trial = config_lib.config_from_dict(config_lib.apply_overrides(
        config_lib.to_dict(cfg), [f"{key}={value!r}" if isinstance(value, str) else
                                  f"{key}={value}" for key, value in values.items()]))
    kinds.for_config(trial)
    return trial


def check_space(cfg: config_lib.ExperimentConfig) -> list[dict]:
    """The checked search space; also tries each bound and choice on the base config so an
    impossible value (e.g. a hidden size the head count does not divide) fails now, not
    in trial 7."""
    space = config_lib.tune_space(cfg)
    if not space:
        raise ConfigError("config key 'tune.space' is empty: list the fields to search, e.g. "
                          "{key: train.learning_rate, type: float, min: 1e-4, max: 1e-2, "
                          "sampling: log} (see configs/demo.yaml)")
    for i, entry in enumerate(space):
        key = entry["key"]
        if cfg.model.pretrained and key in _ARCHITECTURE_KEYS:
            raise ConfigError(f"config key 'tune.space[{i}]': {key} is fixed by the "
                              f"pretrained checkpoint (model.pretrained); remove it")
        if any(key == k or (k.endswith(".") and key.startswith(k))
               for k in _VALIDATION_CHANGING_KEYS):
            raise ConfigError(f"config key 'tune.space[{i}]': {key} changes the validation "
                              "examples, so trials could not be compared; remove it")
        corners = entry["values"] if entry["type"] == "choice" else [entry["min"], entry["max"]]
        for value in corners:
            try:
                trial_config(cfg, {key: value})
            except ConfigError as err:
                raise ConfigError(f"config key 'tune.space[{i}]': {key}={value!r} makes an "
                                  f"invalid config: {err}") from None
    return space


class RecommenderHyperModel(keras_tuner.HyperModel):
    """Builds and fits one trial through the training library.

    Data depends on some searchable fields (history length, negatives per positive), so it
    is prepared per distinct data config and cached across trials.
    """

    def __init__(self, cfg: config_lib.ExperimentConfig, space: list[dict], model_dir: str,
                 strategy: tf.distribute.Strategy):
        super().__init__(name="bert_recommender")
        self.cfg, self.space, self.model_dir, self.strategy = cfg, space, model_dir, strategy
        self._data = {}  # data-config YAML -> (PreparedData, packer)

    def trial_config(self, hp) -> config_lib.ExperimentConfig:
        return trial_config(self.cfg, define_space(hp, self.space))

    def data_for(self, cfg):
        """``(PreparedData, packer)`` for a trial config, prepared once per data config."""
        key = yaml.safe_dump({"data": config_lib.to_dict(cfg)["data"],
                              "kind": cfg.model.kind,
                              "pretrained": cfg.model.pretrained})
        if key not in self._data:
            prepared = train_lib.prepare_data(cfg, self.model_dir)
            self._data[key] = (prepared, train_lib.make_packer(cfg, prepared.vocabulary, prepared))
        return self._data[key]

    def build(self, hp):
        cfg = self.trial_config(hp)
        prepared, packer = self.data_for(cfg)
        keras.utils.set_random_seed(cfg.train.seed)
        with self.strategy.scope():
            model = train_lib.build_model(cfg, packer, prepared.ids, prepared.tables["train"])
            # Built now: Hyperband reloads a promoted trial's weights into this model.
            model(train_lib.dummy_batch(cfg, packer))
        return model

    def fit(self, hp, model, *args, callbacks=None, epochs=None, initial_epoch=0, **kwargs):
        cfg = self.trial_config(hp)
        prepared, packer = self.data_for(cfg)
        fitted = train_lib.fit_model(cfg, model, prepared.tables, packer, self.strategy,
                                     verbose=0, extra_callbacks=callbacks or [],
                                     epochs=epochs, initial_epoch=initial_epoch,
                                     item_text=prepared.ids.item_texts(
                                         prepared.catalogue, cfg.data.item_text_fields))
        history = fitted["history"]
        best = (max if cfg.tune.objective.endswith("auc") else min)(history[cfg.tune.objective])
        log.info("trial %s: %s=%.4f", hp.values, cfg.tune.objective, best)
        return {cfg.tune.objective: best}


_TUNERS = {"random": keras_tuner.RandomSearch, "bayesian": keras_tuner.BayesianOptimization,
           "hyperband": keras_tuner.Hyperband}


def make_tuner(cfg: config_lib.ExperimentConfig, hypermodel: RecommenderHyperModel,
               model_dir: str) -> keras_tuner.Tuner:
    """The keras-tuner tuner named by ``tune.algorithm``; state under ``model_dir/tuner``
    (a rerun resumes it: keras-tuner reloads its oracle)."""
    t = cfg.tune
    # keras-tuner reads a seed of 0 (our default) as "draw one at random", which made two
    # runs of the same search sample different trials; the shift keeps every seed fixed.
    common = dict(hypermodel=hypermodel, objective=objective(cfg), seed=t.seed + 1,
                  directory=model_dir, project_name="tuner", overwrite=False,
                  distribution_strategy=hypermodel.strategy)
    if t.algorithm == "hyperband":
        tuner = keras_tuner.Hyperband(max_epochs=cfg.train.epochs, factor=t.hyperband_factor,
                                      **common)
        # Hyperband sizes its brackets from max_epochs; max_trials caps the total.
        tuner.oracle.max_trials = t.max_trials
    else:
        tuner = _TUNERS[t.algorithm](max_trials=t.max_trials,
                                     executions_per_trial=t.executions_per_trial, **common)
    return tuner


def _write_hparams_config(log_dir: str, space: list[dict]) -> None:
    """The experiment-level HParams summary: the searched fields' domains and the metrics
    the dashboard shows for each trial (the per-trial values come from keras-tuner)."""
    from tensorboard.plugins.hparams import api as hparams_api  # pylint: disable=import-outside-toplevel

    hparams = []
    for entry in space:
        if entry["type"] == "choice":
            domain = hparams_api.Discrete(entry["values"])
        elif entry["type"] == "int":
            domain = hparams_api.IntInterval(entry["min"], entry["max"])
        else:
            domain = hparams_api.RealInterval(float(entry["min"]), float(entry["max"]))
        hparams.append(hparams_api.HParam(entry["key"], domain))
    metrics = [hparams_api.Metric("epoch_auc", group="validation", display_name="val AUC"),
               hparams_api.Metric("epoch_loss", group="validation", display_name="val loss")]
    with tf.summary.create_file_writer(log_dir).as_default():
        hparams_api.hparams_config(hparams=hparams, metrics=metrics)


def tune(cfg: config_lib.ExperimentConfig, model_dir: str,
         strategy: tf.distribute.Strategy | None = None) -> dict:
    """Runs the search; returns the tune_results.json content (see module docstring)."""
    space = check_space(cfg)
    train_lib.check_model_dir(model_dir, cfg)
    strategy = strategy or distribute.make_strategy(cfg.runtime)
    distribute.set_precision(cfg.runtime)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # keras-tuner's oracle lives in one process; a multi-worker search would need its
        # chief/worker tuner protocol (KERASTUNER_ORACLE_*), which this does not set up.
        raise ConfigError("tune runs in one process: use runtime.strategy mirrored, tpu or "
                          "default, not a multi-worker cluster")

    hypermodel = RecommenderHyperModel(cfg, space, model_dir, strategy)
    hypermodel.data_for(cfg)  # surfaces bad data before anything is written
    tf.io.gfile.makedirs(model_dir)
    atomic_write_text(os.path.join(model_dir, "config.yaml"), config_lib.dump_yaml(cfg))
    log_dir = os.path.join(model_dir, "tensorboard")
    _write_hparams_config(log_dir, space)

    tuner = make_tuner(cfg, hypermodel, model_dir)
    tuner.search(callbacks=[keras.callbacks.TensorBoard(log_dir, update_freq="epoch")])

    sign = -1.0 if objective(cfg).direction == "max" else 1.0
    # Best first; trials without a score (failed) last.
    trials = sorted(tuner.oracle.trials.values(),
                    key=lambda t: (t.score is None, sign * (t.score or 0.0)))
    rows = [{"trial_id": t.trial_id, "status": t.status, "score": t.score,
             "values": {e["key"]: t.hyperparameters.values.get(e["key"]) for e in space},
             # Hyperband trains a trial for a budget of epochs (continuing an earlier one).
             "epochs": t.hyperparameters.values.get("tuner/epochs", cfg.train.epochs),
             "tensorboard": os.path.join(log_dir, t.trial_id)} for t in trials]
    finished = [r for r in rows if r["score"] is not None]
    if not finished:
        raise RuntimeError(f"no trial finished; see the log and {model_dir}/tuner")
    best_cfg = trial_config(cfg, finished[0]["values"])
    atomic_write_text(os.path.join(model_dir, "best_config.yaml"),
                      "# Written by `python -m trainer.task tune`: the base config with the "
                      f"best trial's values ({cfg.tune.objective}={finished[0]['score']:.4f}).\n"
                      + config_lib.dump_yaml(best_cfg))
    results = {"algorithm": cfg.tune.algorithm, "objective": cfg.tune.objective,
               "direction": objective(cfg).direction, "trials": rows,
               "best": finished[0], "best_config": os.path.join(model_dir, "best_config.yaml")}
    write_json(os.path.join(model_dir, "tune_results.json"), results)
    return results


def format_trials_table(results: dict) -> str:
    """The trials, best first, with their values and objective."""
    keys = list(results["trials"][0]["values"]) if results["trials"] else []
    header = f"{'trial':<8}{'epochs':>7}{results['objective']:>10}  " + "  ".join(keys)
    lines = [header]
    for row in results["trials"]:
        score = "-" if row["score"] is None else f"{row['score']:.4f}"
        values = "  ".join(f"{row['values'][k]:.4g}" if isinstance(row['values'][k], float)
                           else str(row["values"][k]) for k in keys)
        lines.append(f"{row['trial_id']:<8}{row['epochs']:>7}{score:>10}  {values}")
    return "\n".join(lines)
