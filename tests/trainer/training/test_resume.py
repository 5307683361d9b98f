"""Exact resume (trainer/training/resume.py): the saved state round-trips, a half-written snapshot is
ignored, and a training run SIGKILLed mid-epoch and rerun ends with the same model as an
uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from bert_recommender.models import two_tower  # noqa: F401  (load_model needs the registered classes)
from tests.harness import REPO
from trainer.data import input_pipeline  # noqa: F401
from trainer.training import resume


def _model():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def _callbacks(backup_dir, ckpt_path):
    es = keras.callbacks.EarlyStopping(monitor="loss", patience=5, restore_best_weights=True)
    ckpt = keras.callbacks.ModelCheckpoint(ckpt_path, monitor="loss", save_best_only=True,
                                           save_weights_only=True)
    return es, ckpt, resume.TrainingState(backup_dir, es, ckpt)


def test_state_round_trips_weights_optimizer_rng_and_callbacks(tmp_path):
    x, y = _data()
    model = _model()
    es, ckpt, state = _callbacks(str(tmp_path / "backup"), str(tmp_path / "b.weights.h5"))
    assert state.restore(model) == (0, False)  # nothing to resume yet
    model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[ckpt, es, state])
    assert (tmp_path / "backup" / "latest").read_text().strip() == "epoch-00003"
    assert sorted(os.listdir(tmp_path / "backup")) == ["epoch-00003", "latest"]

    fresh = _model()
    es2, ckpt2, state2 = _callbacks(str(tmp_path / "backup"), str(tmp_path / "b.weights.h5"))
    assert state2.restore(fresh) == (3, False)
    for a, b in zip(model.weights + model.optimizer.variables,
                    fresh.weights + fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    # The dropout RNG continues where it was, not from its initial seed.
    for a, b in zip(resume._seed_states(model), resume._seed_states(fresh)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(resume._seed_states(_model())[0]),
                              np.asarray(resume._seed_states(fresh)[0]))
    es2.on_train_begin()  # resets, as fit does, before the state callback re-applies
    state2.on_train_begin()
    assert (es2.wait, es2.best, es2.best_epoch) == (es.wait, es.best, es.best_epoch)
    assert ckpt2.best == ckpt.best
    for a, b in zip(es.best_weights, es2.best_weights):
        np.testing.assert_array_equal(a, b)
    assert state2.history["loss"] == pytest.approx(state.history["loss"])
    assert len(state2.history["loss"]) == 3

    # Continuing one epoch from the restored state equals continuing the original.
    model.fit(x, y, epochs=4, initial_epoch=3, batch_size=16, verbose=0, shuffle=False)
    fresh.fit(x, y, epochs=4, initial_epoch=3, batch_size=16, verbose=0, shuffle=False)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_half_written_snapshot_is_ignored(tmp_path):
    x, y = _data()
    model = _model()
    es, ckpt, state = _callbacks(str(tmp_path / "backup"), str(tmp_path / "b.weights.h5"))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[ckpt, es, state])
    # A kill while epoch 3's snapshot was being written: its directory exists, `latest`
    # still names epoch 2.
    (tmp_path / "backup" / "epoch-00003").mkdir()
    (tmp_path / "backup" / "epoch-00003" / "model.weights.h5").write_bytes(b"partial")
    assert state.latest_snapshot().endswith("epoch-00002")
    assert _callbacks(str(tmp_path / "backup"), "unused.weights.h5")[2].restore(_model()) \
        == (2, False)
    state.clear()
    assert not (tmp_path / "backup").exists()


# ---------------------------------------------------------------------------------------
# A real run, killed and resumed
# ---------------------------------------------------------------------------------------

EPOCHS = 4
RESUME_OVERRIDES = ["data.synthetic.num_users=120", "data.synthetic.num_items=60",
                    f"train.epochs={EPOCHS}", "train.early_stopping_patience=10",
                    "data.vocab_size=100", "train.export=false"]


def _train_args(model_dir, extra=()):
    args = [sys.executable, "-m", "trainer.task", "train",
            "--config", os.path.join(REPO, "configs", "tiny.yaml"), "--model_dir", str(model_dir)]
    for override in RESUME_OVERRIDES + list(extra):
        args += ["--set", override]
    return args


def _run(args):
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _kill_at_random(args, ready, max_delay: float, seed: int) -> None:
    """Starts ``args``, waits until ``ready()`` (the process must still be running), then
    SIGKILLs it after a random delay of up to ``max_delay`` seconds."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not ready():
            assert proc.poll() is None, "the process ended before the point to kill it"
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(random.Random(seed).uniform(0.0, max_delay))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def _kill_after_epoch_1(args, model_dir, seed):
    """Starts a run, SIGKILLs it at a random moment after epoch 1 was saved (the kill
    lands in epoch 2 or later, before the run ends), and returns the epoch the kill
    interrupted."""
    latest = model_dir / "backup" / "latest"
    _kill_at_random(args, latest.exists, max_delay=1.5, seed=seed)
    assert not (model_dir / "metrics.json").exists()
    return int(latest.read_text().strip().split("-")[1]) + 1


def _assert_same_run(a, b):
    # model.keras holds the compiled optimizer, whose schedule this import registers (run
    # alone, no earlier test of this process has imported it).
    from trainer.training import optimization  # noqa: F401

    wa = keras.models.load_model(a / "model.keras").get_weights()
    wb = keras.models.load_model(b / "model.keras").get_weights()
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(x, y, atol=1e-6)
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    for key in ("auc", "logloss", "group_auc", "ndcg@10"):
        assert mb["test"][key] == pytest.approx(ma["test"][key], abs=1e-6), key
    assert mb["train"]["epochs_run"] == ma["train"]["epochs_run"]
    for key, values in ma["train"]["history"].items():
        if key not in ("wall_seconds", "epoch_train_seconds"):  # clocks, not the model
            assert mb["train"]["history"][key] == pytest.approx(values, abs=1e-6), key
    assert len(mb["train"]["history"]["wall_seconds"]) == ma["train"]["epochs_run"]


@pytest.mark.slow
# Under a mirrored strategy over two logical CPUs: the same resume code as one device runs,
# inside the strategy's scope, so this run covers both (a one-device twin cost CI 105 s).
# Its uninterrupted run is also the suite's check that a CLI run trains data parallel
# over two replicas (a separate mirrored run cost CI 58 s).
@pytest.mark.parametrize("extra", [
    ["runtime.strategy=mirrored", "runtime.logical_cpus=2"],
], ids=["mirrored"])
def test_a_killed_run_resumes_to_the_uninterrupted_model(tmp_path, extra):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(_train_args(uninterrupted, extra))
    trained = json.loads((uninterrupted / "metrics.json").read_text())
    assert trained["train"]["replicas"] == 2
    assert trained["test"]["examples"] > 0
    epoch = _kill_after_epoch_1(_train_args(killed, extra), killed, seed=len(extra))
    assert 2 <= epoch <= EPOCHS + 1
    _run(_train_args(killed, extra))  # the same command again
    _assert_same_run(uninterrupted, killed)
    assert not (killed / "backup").exists()
    # TensorBoard: no epoch written twice across the two processes.
    steps = _epoch_loss_steps(killed / "tensorboard" / "train")
    assert len(steps) == len(set(steps)) and set(steps) <= set(range(EPOCHS)), steps


def _epoch_loss_steps(log_dir) -> list:
    import tensorflow as tf

    steps = []
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            steps += [event.step for value in event.summary.value if value.tag == "epoch_loss"]
    return steps


def _stream(table, skip_rows, total_rows, batch=4):
    data = input_pipeline.make_dataset(table, batch, training=True, seed=5, shuffle_buffer=8,
                                       repeat=True, skip_rows=skip_rows,
                                       total_rows=total_rows)
    return [int(i) for features, _ in data for i in features["item_index"].numpy()]


def test_the_training_stream_is_a_function_of_seed_and_position():
    n = 10
    table = input_pipeline.PairTable(
        user_text=np.array(["u"] * n, dtype=object), item_text=np.array(["i"] * n, dtype=object),
        label=np.zeros(n, np.float32), group=np.arange(n), user_index=np.zeros(n, np.int32),
        item_index=np.arange(n, dtype=np.int32))
    full = _stream(table, 0, 36)
    assert len(full) == 48  # 5 whole passes (one more than the 36 rows need), in batches of 4
    # Each pass over the table is a permutation of it, and passes differ.
    passes = [full[k:k + n] for k in range(0, 30, n)]
    assert all(sorted(p) == list(range(n)) for p in passes)
    assert passes[0] != passes[1] != passes[2]
    # Resuming at any position gives the rest of the same stream.
    for skip in (4, 12, 20, 24):
        assert _stream(table, skip, 36)[:36 - skip] == full[skip:36]


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_uninterrupted_trials(tmp_path):
    """A `tune` killed during its second trial and rerun ends with the trials (values and
    scores) of an uninterrupted search: keras-tuner reruns the interrupted trial, and a
    trial's model and data stream depend only on its seed."""
    def args(model_dir):
        out = [sys.executable, "-m", "trainer.task", "tune", "--config",
               os.path.join(REPO, "configs", "tiny.yaml"), "--model_dir", str(model_dir)]
        for override in ["data.synthetic.num_users=60", "data.vocab_size=100",
                         "tune.max_trials=2", "tune.algorithm=random", "train.epochs=2"]:
            out += ["--set", override]
        return out

    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(args(uninterrupted))
    first = killed / "tuner" / "trial_0" / "trial.json"
    _kill_at_random(args(killed),
                    lambda: first.exists() and '"COMPLETED"' in first.read_text(),
                    max_delay=1.0, seed=0)
    assert not (killed / "tune_results.json").exists()
    _run(args(killed))
    a = json.loads((uninterrupted / "tune_results.json").read_text())["trials"]
    b = json.loads((killed / "tune_results.json").read_text())["trials"]
    assert len(a) == 2
    assert [t["values"] for t in b] == [t["values"] for t in a]
    assert [t["score"] for t in b] == pytest.approx([t["score"] for t in a], abs=1e-6)
