"""The one training routine every model uses: data -> model -> fit -> evaluate -> export.

``train(cfg, model_dir)`` writes a run directory whose layout, and the one way to open it
again, are trainer/runs.py's; the manifest it writes last marks the run finished.

Everything that can reject the input (config, run directory, data files) runs before the
first file is written into ``model_dir``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
import yaml

from trainer import config as config_lib
from trainer.data import prepared as prepared_lib
from trainer.data.prepared import PreparedData
from trainer import backend, kinds, runs
from trainer.data import input_pipeline
from trainer.training import distribute, guards, optimization, privacy, resume
from trainer.serving import export
from trainer.evaluation import run_reports, scoring
from trainer.training.optimization import WarmupLinearDecay, make_optimizer  # noqa: F401  (API)
from trainer.io import atomic_write_text, write_json
from trainer.errors import RunDirError, UserInputError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------

def check_model_dir(model_dir: str, cfg: config_lib.ExperimentConfig) -> bool:
    """Raises RunDirError if ``model_dir`` holds a run of a *different* config.

    Returns True when it holds the same config (the run resumes from its backup).
    """
    path = os.path.join(model_dir, "config.yaml")
    if not tf.io.gfile.exists(path):
        return False
    with tf.io.gfile.GFile(path) as f:
        existing = yaml.safe_load(f.read())
    resolved = config_lib.to_dict(cfg)
    if existing != resolved:
        diff = config_lib.diff_keys(existing or {}, resolved)
        raise RunDirError(
            f"{path}: model_dir already holds a run with a different config (differs at "
            f"{', '.join(diff[:5]) or 'top level'}); use a new --model_dir, or rerun with the "
            "same config to resume")
    return True


# ---------------------------------------------------------------------------------------
# Data and model
# ---------------------------------------------------------------------------------------

def prepare_data(cfg: config_lib.ExperimentConfig, model_dir: str) -> PreparedData:
    """:func:`trainer.data.prepared.prepare_data`, learning a WordPiece vocabulary when the
    config's kind reads text from random init."""
    return prepared_lib.prepare_data(cfg, model_dir,
                                     kinds.for_config(cfg).learns_vocabulary(cfg))


def make_packer(cfg: config_lib.ExperimentConfig, vocabulary,
                prepared: PreparedData | None = None, cache_dir: str | None = None):
    """The model kind's featurizer (trainer/kinds/): the in-graph tokenizer +
    packer of a cross-encoder, the item-token table and tokenizer of a two-tower model,
    None for id-based models. Two-tower featurizers need ``prepared`` (the catalogue and
    the id vocabulary); ``cache_dir`` keeps what a featurizer computes once (a frozen
    two-tower's text vectors: the run directory, or a benchmark's output)."""
    kind = kinds.for_config(cfg)
    catalogue, ids = (prepared.catalogue, prepared.ids) if prepared is not None else (None,
                                                                                        None)
    return kind.featurizer(cfg, vocabulary, catalogue, ids, cache_dir=cache_dir)


def build_model(cfg: config_lib.ExperimentConfig, packer, ids: input_pipeline.IdVocabulary,
                train_table: input_pipeline.PairTable) -> keras.Model:
    """The model of ``model.kind`` (call inside ``strategy.scope()``), with anything
    counted from ``train_table`` (popularity, sampling probabilities) already set."""
    kind = kinds.for_config(cfg)
    model = kind.build(cfg, packer, ids, train_table)
    if train_table is not None:
        kind.fit_counts(model, train_table)
    return model


def dummy_batch(cfg: config_lib.ExperimentConfig, packer) -> dict:
    """A one-row batch that builds the model of ``cfg``."""
    return kinds.for_config(cfg).dummy_batch(packer)


# ---------------------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------------------

class EpochClock(keras.callbacks.Callback):
    """Writes ``epoch_train_seconds`` into each epoch's logs (so into the history and
    TensorBoard): wall seconds of the epoch's training steps, up to its validation. Placed
    first among the callbacks, so validation run in ``on_epoch_end`` callbacks (the ranking
    metrics) is not counted; ``fit``'s own validation starts with ``on_test_begin``."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.trained = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        self.trained = self.trained or time.perf_counter() - self.started

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_train_seconds"] = self.trained or time.perf_counter() - self.started


class WallClock(keras.callbacks.Callback):
    """Writes ``wall_seconds`` into each epoch's logs: seconds since ``fit`` began, the
    epoch's validation included (placed after the validation callbacks), so a validation
    metric can be drawn against the time it took to reach (time to quality)."""

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["wall_seconds"] = time.perf_counter() - self.started


def _callbacks(cfg: config_lib.ExperimentConfig,
               model_dir: str | None) -> tuple[list, resume.TrainingState | None]:
    """The fit callbacks, in the order they must run, and the run's resumable state.

    Early stopping (restoring the best weights) selects the model in every run; the rest
    write into the run directory, so a benchmark without one gets only early stopping.
    The training state is saved after early stopping and the checkpoint have seen the
    epoch (it holds their state) and before TensorBoard writes it (a kill between the two
    loses that epoch's summary; it never writes one twice)."""
    monitor = f"val_{cfg.train.early_stopping_metric}"
    early_stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode="max",
                                                   patience=cfg.train.early_stopping_patience,
                                                   restore_best_weights=True)
    if not model_dir:
        return [guards.StopOnNonFiniteLoss(), early_stopping], None
    checkpoint = keras.callbacks.ModelCheckpoint(
        os.path.join(model_dir, "checkpoints", "best.weights.h5"), monitor=monitor,
        mode="max", save_best_only=True, save_weights_only=True)
    state = resume.TrainingState(os.path.join(model_dir, "backup"), early_stopping,
                                 checkpoint)
    profile = cfg.runtime.profile_steps
    return [
        guards.StopOnNonFiniteLoss(model_dir),
        checkpoint,
        early_stopping,
        state,
        keras.callbacks.TensorBoard(os.path.join(model_dir, "tensorboard"),
                                    update_freq="epoch",
                                    profile_batch=tuple(profile) if profile else 0),
    ], state


def compile_model(cfg: config_lib.ExperimentConfig, model: keras.Model, packer,
                  strategy: tf.distribute.Strategy, total_steps: int,
                  distillation: bool = False) -> keras.Model:
    """Builds ``model`` on a dummy batch and compiles it (AdamW with warmup/decay, BCE on the
    logit, AUC) under ``strategy``, with ``train.jit_compile`` and
    ``train.steps_per_execution``. With ``distillation`` the loss is
    ``bert_recommender.models.distillation.DistillationLoss(distill.alpha,
    distill.temperature)`` and AUC reads the labelled rows of its ``[label, teacher_logit,
    labelled]`` targets."""
    with strategy.scope():
        model(dummy_batch(cfg, packer))  # build the weights before compile/restore
        optimization.compile_for_training(model, cfg, total_steps, distillation)
    return model


def make_train_dataset(cfg: config_lib.ExperimentConfig, table: input_pipeline.PairTable,
                       packer, global_batch: int, skip_steps: int = 0,
                       total_steps: int | None = None) -> tf.data.Dataset:
    """The repeated, shuffled training dataset (streamed from the TFRecord shards of a
    :class:`input_pipeline.StreamingTable`, ``data.tfrecord_dir``), from step
    ``skip_steps`` on.

    From an in-memory table the stream of rows is a function of ``train.seed`` alone
    (passes over the table, each shuffled with its own seed), so a run that continues from
    epoch e (resumed after a kill, or a Hyperband trial carried on) skips the
    ``skip_steps * global_batch`` rows the earlier epochs consumed and sees exactly the
    batches an uninterrupted run would. TFRecord shards are read in a non-deterministic
    interleave (for throughput), so a resumed streaming run continues the stream, not
    exactly."""
    source, cache, streaming = table, cfg.data.cache_tokens, {}
    if isinstance(table, input_pipeline.StreamingTable):
        source, cache = table.paths, False
        streaming = {"positives_only": table.positives_only, "users": table.users}
    return input_pipeline.make_dataset(
        source, global_batch, packer=packer, training=True, seed=cfg.train.seed,
        shuffle_buffer=cfg.data.shuffle_buffer, repeat=True, cache_tokens=cache,
        **streaming,
        skip_rows=skip_steps * global_batch,
        total_rows=total_steps * global_batch if total_steps else None)


def fit_model(cfg: config_lib.ExperimentConfig, model: keras.Model, tables: dict, packer,
              strategy: tf.distribute.Strategy, model_dir: str | None = None,
              verbose: int = 2, extra_callbacks: list = (), epochs: int | None = None,
              initial_epoch: int = 0, item_text=None) -> dict:
    """Compiles ``model`` and fits it on ``tables["train"]``, validating on
    ``tables["validation"]``: the one fit routine every model goes through.

    ``model`` must have been created inside ``strategy.scope()`` (see :func:`build_model`);
    it is built on a dummy batch and compiled there (:func:`compile_model`). Models without
    trainable weights (MostPopular) are compiled but not fitted. Early stopping on the
    validation ``train.early_stopping_metric`` restores the best weights. With
    ``model_dir`` the run also writes ``backup/`` (resumable),
    ``checkpoints/best.weights.h5`` and ``tensorboard/`` there;
    without it nothing is written (benchmarks compare several models in one process).
    ``extra_callbacks``, ``epochs`` (default ``train.epochs``; the learning-rate schedule
    always spans ``train.epochs``) and ``initial_epoch`` let a tuner drive the fit.
    ``item_text`` (the catalogue texts, ``IdVocabulary.item_texts``) is needed by
    ``train.early_stopping_metric: full_ndcg@10``, which ranks each validation positive
    against the whole catalogue.

    With ``train.privacy.enabled`` the fit is DP-SGD (trainer/training/privacy.py): Poisson-sampled
    steps, per-example clipping and noise; the result then holds ``privacy``, the epsilon
    spent by the steps run.

    Returns ``{"steps_per_epoch": int, "epochs_run": int, "history": {metric: [floats]}}``.
    """
    global_batch = cfg.train.batch_size * strategy.num_replicas_in_sync
    train_rows = kinds.for_config(cfg).training_rows(cfg, tables["train"])
    steps_per_epoch = cfg.train.steps_per_epoch or max(1, len(train_rows) // global_batch)
    total_steps = steps_per_epoch * cfg.train.epochs
    private = cfg.train.privacy.enabled
    _check_private(cfg, strategy, distilled=train_rows.teacher_logit is not None)
    # A train table that carries teacher logits (trainer/training/distill_lib.py) is distilled.
    compile_model(cfg, model, packer, strategy, total_steps,
                  distillation=train_rows.teacher_logit is not None)
    if private:
        max_batch = privacy.max_batch_size(cfg.train.privacy, cfg.train.batch_size,
                                           len(train_rows), total_steps)
        if model.trainable_weights:
            privacy.make_private(model, kinds.for_config(cfg), cfg.train.privacy,
                                 cfg.train.batch_size, max_batch)

    history = {}
    if model.trainable_weights:
        callbacks, state = _callbacks(cfg, model_dir)
        epochs = epochs or cfg.train.epochs
        if state is not None:
            with strategy.scope():  # the optimizer's variables are built under it
                done, stopped = state.restore(model)
            # Early stopping had ended the run: no epoch is left, fit only restores the
            # best weights.
            initial_epoch = epochs if stopped else max(initial_epoch, min(done, epochs))
        if private:
            sampler = privacy.PoissonSampler(len(train_rows), cfg.train.batch_size,
                                             max_batch, cfg.train.seed)
            train_ds = privacy.make_dataset(train_rows, packer, sampler,
                                            first_step=initial_epoch * steps_per_epoch)
        else:
            train_ds = make_train_dataset(cfg, train_rows, packer, global_batch,
                                          skip_steps=initial_epoch * steps_per_epoch,
                                          total_steps=epochs * steps_per_epoch)
        val_ds = input_pipeline.make_dataset(tables["validation"], cfg.train.eval_batch_size,
                                             packer=packer)
        callbacks = [EpochClock(), WallClock()] + callbacks + list(extra_callbacks)
        multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        validation_data, curves_data = val_ds, val_ds
        if cfg.train.early_stopping_metric != "auc":
            if multi_worker:
                raise UserInputError(
                    f"train.early_stopping_metric={cfg.train.early_stopping_metric} scores the "
                    "validation split on one worker; under multi_worker use "
                    "train.early_stopping_metric=auc")
            # One validation scoring per epoch (from cached item vectors where the kind
            # allows, else a predict), whose metrics go into the logs ahead of early
            # stopping and the checkpoint (fit's own pass would be a second).
            ranking = run_reports.ValidationRanking(
                _validation_scorer(cfg, tables["validation"], packer, item_text) or val_ds,
                tables["validation"].label, tables["validation"].group)
            # After the epoch clock, before the wall clock (which counts validation).
            callbacks.insert(1, ranking)
            if cfg.train.early_stopping_metric.startswith("full_"):
                callbacks.insert(2, _full_ranking_callback(cfg, tables["validation"], packer,
                                                           item_text))
            validation_data, curves_data = None, lambda _: ranking.last_logits
        # Per-epoch PR curve and score histograms. Not under a multi-worker strategy: its
        # predict is a collective over sharded data, so rows would not line up with labels.
        if model_dir and not multi_worker:
            callbacks.append(run_reports.ValidationCurves(
                os.path.join(model_dir, "tensorboard", "validation"), curves_data,
                tables["validation"].label))
        fit = model.fit(train_ds, epochs=epochs,
                        initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                        validation_data=validation_data, shuffle=False,  # tf.data shuffles
                        callbacks=callbacks,
                        verbose=verbose)
        # A resumed run's history holds the epochs run before the kill too.
        history = (dict(state.history) if state is not None else
                   {k: [float(v) for v in vals] for k, vals in fit.history.items()})
    fitted = {"steps_per_epoch": steps_per_epoch, "epochs_run": len(history.get("loss", [])),
              "history": history}
    if private:
        fitted["privacy"] = dataclasses.asdict(privacy.account(
            cfg.train.privacy, len(train_rows), cfg.train.batch_size, max_batch,
            fitted["epochs_run"] * steps_per_epoch))
    return fitted


def _validation_scorer(cfg, validation, packer, item_text):
    """The validation rows' logits as a function of the model, from one user state per
    group against cached item vectors (``ModelKind.catalogue_grouping``), or None where
    that would not be the same logits (``predict`` then scores the rows)."""
    kind = kinds.for_config(cfg)
    grouping = kind.catalogue_grouping(validation, item_text)
    if grouping is None:
        return None
    return lambda model: kind.table_logits_from_catalogue(model, packer, grouping, item_text,
                                                          cfg.train.eval_batch_size)


def _full_ranking_callback(cfg, validation, packer, item_text):
    """:class:`run_reports.ValidationFullRanking` over the validation positives."""
    kind = kinds.for_config(cfg)  # its config check refuses kinds that score pair by pair
    metric = cfg.train.early_stopping_metric
    if item_text is None:
        raise ValueError(f"fit_model: train.early_stopping_metric={metric} needs item_text")
    positives = validation.subset(np.flatnonzero(validation.label > 0))
    return run_reports.ValidationFullRanking(kind, packer, positives, item_text,
                                             cfg.train.eval_batch_size)


def _check_private(cfg: config_lib.ExperimentConfig, strategy, distilled: bool) -> None:
    """What config validation cannot see of a private run: the replicas a strategy got,
    and distillation."""
    if not cfg.train.privacy.enabled:
        return
    if strategy.num_replicas_in_sync > 1:
        raise UserInputError(f"train.privacy: {strategy.num_replicas_in_sync} replicas would "
                             "each add noise to a share of the sample; train on one device "
                             "(runtime.strategy=one_device)")
    if distilled:
        raise UserInputError("train.privacy: a teacher's logits come from a model trained "
                             "on the same rows without privacy; distil without it")


def train(cfg: config_lib.ExperimentConfig, model_dir: str,
          strategy: tf.distribute.Strategy | None = None, train_table_hook=None) -> dict:
    """Trains, evaluates and exports one experiment; returns the metrics.json content.

    Under MultiWorkerMirroredStrategy every worker runs this; only the chief writes
    ``model_dir`` (the others write into a temporary directory removed at the end, and
    return ``{}``). ``train_table_hook(prepared, run_dir) -> PairTable``, called once the
    run directory exists, replaces the training table (distillation adds the teacher's
    logits and unlabelled pairs through it).
    """
    started = time.time()
    backend.select(cfg.runtime.backend)  # refuses a backend Keras does not run, first
    kinds.for_config(cfg)  # the kind's own config checks, before anything is written
    resuming = check_model_dir(model_dir, cfg)
    strategy = strategy or distribute.make_strategy(cfg.runtime)
    # Before anything is written (fit_model checks again for callers that skip train).
    _check_private(cfg, strategy, distilled=train_table_hook is not None)
    distribute.set_precision(cfg.runtime)
    keras.utils.set_random_seed(cfg.train.seed)
    write_dir = distribute.worker_write_dir(model_dir, strategy)
    try:
        return _train(cfg, model_dir, write_dir, strategy, resuming, started,
                      train_table_hook)
    finally:
        if write_dir != model_dir and tf.io.gfile.exists(write_dir):
            tf.io.gfile.rmtree(write_dir)


def _train(cfg, model_dir, write_dir, strategy, resuming, started,
           train_table_hook=None) -> dict:
    # A live run holds the directory: refuse before any work. Checked on this worker's own
    # write directory, so a multi-worker job's other workers (which write into temporary
    # directories) are not refused by the chief's lock on model_dir.
    guards.RunLock(write_dir).check()
    prepared = prepare_data(cfg, write_dir)

    # The input is valid: from here on the run directory is written, by this run alone.
    with guards.RunLock(write_dir):
        return _train_and_write(cfg, model_dir, write_dir, strategy, resuming, started,
                                prepared, train_table_hook)


def _train_and_write(cfg, model_dir, write_dir, strategy, resuming, started, prepared,
                     train_table_hook) -> dict:
    chief = write_dir == model_dir
    tables = prepared.tables
    kind = kinds.for_config(cfg)
    tf.io.gfile.makedirs(write_dir)
    runs.mark_unfinished(write_dir)  # rewritten from here on
    if chief and not resuming:
        atomic_write_text(os.path.join(write_dir, "config.yaml"), config_lib.dump_yaml(cfg))
    if not chief:
        _copy_backup(model_dir, write_dir)
    write_json(os.path.join(write_dir, "data_info.json"), prepared.info)
    vocabulary = prepared.vocabulary
    if vocabulary is not None:
        vocab_path = os.path.join(write_dir, "vocab.txt")
        atomic_write_text(vocab_path, "\n".join(vocabulary) + "\n")
        vocabulary = vocab_path
    packer = make_packer(cfg, vocabulary, prepared, cache_dir=write_dir)
    runs.write_inputs(write_dir, kind, packer, prepared.catalogue)
    if train_table_hook is not None:
        tables = {**tables, "train": train_table_hook(prepared, write_dir)}

    with strategy.scope():
        model = build_model(cfg, packer, prepared.ids, tables["train"])
    fitted = fit_model(cfg, model, tables, packer, strategy, write_dir,
                       item_text=prepared.ids.item_texts(prepared.catalogue,
                                                         cfg.data.item_text_fields))
    train_seconds = time.time() - started
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        if not chief:
            return {}
        model = _single_device_copy(cfg, model, packer, prepared)

    split_logits = scoring.predict_splits(model, tables, packer, cfg.train.eval_batch_size)
    results = scoring.evaluate_tables(model, tables, packer, cfg.train.eval_batch_size,
                                      split_logits)
    # A retrieving kind's item vectors, computed once: for retrieval (`recommend`, and the
    # export's `retrieve` signature, which bakes them in) and the projector.
    item_index = kind.item_index(model, packer, cfg.train.eval_batch_size)
    results["reports"] = _write_reports(cfg, model_dir, model, packer, prepared, split_logits,
                                        fitted["epochs_run"], item_index)
    results["train"] = {"seconds": round(train_seconds, 1),
                        "steps_per_epoch": fitted["steps_per_epoch"],
                        "epochs_run": fitted["epochs_run"],
                        "replicas": strategy.num_replicas_in_sync,
                        "history": fitted["history"]}
    if "privacy" in fitted:
        results["privacy"] = fitted["privacy"]
    results["train"]["backend"] = keras.backend.backend()
    # The served artefacts first and metrics.json last, each written atomically: a failed
    # write (disk full, permissions) leaves the previous run's export and metrics intact.
    staging = os.path.join(model_dir, f".staging-{os.getpid()}")
    try:
        tf.io.gfile.makedirs(staging)
        model.save(os.path.join(staging, runs.MODEL))
        # Without train.export, `python -m trainer.task export` writes them later.
        if cfg.train.export and keras.backend.backend() == "tensorflow":
            write_exports(model, model_dir, kind, packer, item_index)
        elif cfg.train.export:
            if item_index is not None:
                item_index.save(staging)
            backend.run_in_tensorflow(["export", "--model_dir", model_dir,
                                       "--source_dir", staging])
        else:  # an earlier run's served models must not outlive its model
            for name in runs.EXPORT_DIRS:
                if tf.io.gfile.exists(os.path.join(model_dir, name)):
                    tf.io.gfile.rmtree(os.path.join(model_dir, name))
        if item_index is not None:
            item_index.save(model_dir)
        tf.io.gfile.rename(os.path.join(staging, runs.MODEL),
                           os.path.join(model_dir, runs.MODEL), overwrite=True)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
    write_json(os.path.join(model_dir, "metrics.json"), results)
    runs.write_manifest(model_dir)  # last: the run is finished and its files are these
    resume.TrainingState(os.path.join(write_dir, "backup")).clear()  # the outputs are written
    return results


def write_exports(model: keras.Model, model_dir: str, kind, packer, item_index=None) -> None:
    """``export/`` and, for text models, ``export_tokens/`` (trainer/serving/export.py), each
    written atomically. TensorFlow backend only (see :func:`export_run`)."""
    raw_dir, token_dir = (os.path.join(model_dir, name) for name in runs.EXPORT_DIRS)
    export.export_saved_model(model, raw_dir, kind, packer, item_index)
    export.export_token_saved_model(model, token_dir, kind, packer, item_index)


def export_run(model_dir: str, source_dir: str | None = None) -> list[str]:
    """Writes a run's served SavedModels from its ``model.keras`` (and ``item_index/``),
    read from ``source_dir`` (a JAX run's staging directory, while training writes the
    run) or from the finished run at ``model_dir``; returns the directories written.
    The ``export`` command.

    Runs under the TensorFlow backend whichever backend trained the model: the .keras
    file is backend-neutral, and the SavedModel's signatures hold tf-text tokenization
    and TensorFlow gradients (the ``explain`` signature), which JAX's jax2tf conversion
    cannot carry. So a JAX-trained run serves the very artefact a TensorFlow one does.
    """
    if keras.backend.backend() != "tensorflow":
        raise UserInputError("export writes TensorFlow SavedModels: run it with "
                             "KERAS_BACKEND=tensorflow (python -m trainer.task export "
                             f"--model_dir {model_dir})")
    run = runs.open_staged_run(model_dir, source_dir) if source_dir else \
        runs.open_run(model_dir)

    def write():
        write_exports(run.model, model_dir, run.kind, run.featurizer, run.item_index)

    if source_dir:
        write()  # training writes the manifest once the run is complete
    else:
        runs.write_manifest_after(model_dir, write)
    return [os.path.join(model_dir, name) for name in runs.EXPORT_DIRS
            if tf.io.gfile.exists(os.path.join(model_dir, name))]


def _write_reports(cfg, model_dir, model, packer, prepared: PreparedData, split_logits: dict,
                   step: int, item_index=None) -> dict:
    """TensorBoard text/PR curve/projector and the calibration and score PNGs of the final
    model on validation (trainer/evaluation/run_reports.py); returns their paths and the bins."""
    table = prepared.tables["validation"]
    embeddings = run_reports.item_embeddings(
        model, kinds.for_config(cfg), packer, prepared.catalogue, prepared.ids,
        cfg.data.item_text_fields, item_index=item_index,
        batch_size=cfg.train.eval_batch_size)
    return run_reports.write_run_reports(
        model_dir, labels=table.label, logits=split_logits["validation"],
        user_text=table.user_text, item_text=table.item_text, embeddings=embeddings,
        split="validation", step=step, seed=cfg.train.seed)


def _copy_backup(model_dir: str, write_dir: str) -> None:
    """Gives a non-chief worker the chief's training state (trainer/training/resume.py), so a restarted
    multi-worker job resumes every worker from the same epoch (they must stay in step)."""
    source = os.path.join(model_dir, "backup")
    if not tf.io.gfile.isdir(source):
        return
    for root, _, files in tf.io.gfile.walk(source):
        target = os.path.join(write_dir, "backup", os.path.relpath(root, source))
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), os.path.join(target, name),
                             overwrite=True)


def _single_device_copy(cfg, model, packer, prepared: PreparedData) -> keras.Model:
    """The trained weights in a model outside the multi-worker strategy: evaluation, saving
    and export then need no collective ops, so the chief runs them alone."""
    local = build_model(cfg, packer, prepared.ids, prepared.tables["train"])
    local(dummy_batch(cfg, packer))
    local.set_weights(model.get_weights())
    return local


# ---------------------------------------------------------------------------------------
# Evaluate a finished run
# ---------------------------------------------------------------------------------------

def evaluate(model_dir: str) -> dict:
    """Re-evaluates a finished run on its validation and test splits."""
    run = runs.open_run(model_dir)
    prepared = run.prepared()
    return scoring.evaluate_tables(run.model, prepared.tables, run.featurizer,
                           run.cfg.train.eval_batch_size)


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------

TABLE_KEYS = ("auc", "oracle_auc", "logloss", "pr_auc", "group_auc", "mrr", "ndcg@5",
              "ndcg@10", "hr@10", "examples")


COMPARISON_KEYS = ("auc", "group_auc", "mrr", "ndcg@10", "hr@10", "examples")


def format_comparison_table(runs: dict, split: str = "test",
                            keys: tuple = COMPARISON_KEYS) -> str:
    """One row per run (``{name: metrics.json content}``), one column per metric of
    ``split``: models trained on the same data side by side."""
    lines = [f"{'model':<14}" + "".join(f"{k:>11}" for k in keys)]
    for name, results in runs.items():
        row = results.get(split, {})
        cells = []
        for key in keys:
            value = row.get(key)
            cells.append(f"{'-':>11}" if value is None else f"{value:>11d}"
                         if isinstance(value, int) else f"{value:>11.4f}")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)


def format_metrics_table(results: dict) -> str:
    """A fixed-width text table of the headline metrics per split."""
    splits = [s for s in ("validation", "test") if s in results]
    lines = [f"{'metric':<12}" + "".join(f"{s:>12}" for s in splits)]
    for key in TABLE_KEYS:
        if not any(key in results[s] for s in splits):
            continue
        cells = []
        for s in splits:
            value = results[s].get(key)
            cells.append(f"{'-':>12}" if value is None else
                         f"{value:>12d}" if isinstance(value, int) else
                         f"{value:>12.4f}" if not math.isnan(value) else f"{'nan':>12}")
        lines.append(f"{key:<12}" + "".join(cells))
    return "\n".join(lines)
