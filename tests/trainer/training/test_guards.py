"""Guards (trainer/training/guards.py and the atomic writers): one live run per directory, a
diverged loss stops the run before anything is exported, and a failed write leaves the
previous outputs intact."""

import os
import signal
import subprocess
import sys

import keras
import pytest

from tests.harness import REPO
from trainer.training import guards, train_lib
from trainer.errors import RunDirError

_HOLD = ("import sys, time; from trainer.training import guards\n"
         "with guards.RunLock(sys.argv[1]):\n"
         "    print('held', flush=True); time.sleep(600)\n")


def _hold_lock(model_dir):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(model_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_holds_the_directory_and_a_killed_one_does_not(tmp_path, tiny_config):
    model_dir = tmp_path / "run"
    holder = _hold_lock(model_dir)
    try:
        with pytest.raises(RunDirError, match=rf"another run is writing .*pid {holder.pid}"):
            guards.RunLock(str(model_dir)).check()
        before = sorted(os.listdir(model_dir))
        with pytest.raises(RunDirError, match="another run is writing"):
            train_lib.train(tiny_config(), str(model_dir))
        assert sorted(os.listdir(model_dir)) == before  # refused before writing anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL released the lock: the next run takes it.
    guards.RunLock(str(model_dir)).check()
    with guards.RunLock(str(model_dir)):
        with pytest.raises(RunDirError):
            with guards.RunLock(str(model_dir)):  # a second holder in the same process
                pass


def test_a_diverged_loss_stops_the_run_before_anything_is_exported(tmp_path, tiny_config):
    model_dir = tmp_path / "run"
    cfg = tiny_config("train.learning_rate=1e30", "train.clipnorm=0", "train.epochs=2")
    with pytest.raises(guards.TrainingDiverged, match=r"loss became (nan|inf) at epoch 1, "
                                                      r"step \d+.*lower train.learning_rate"):
        train_lib.train(cfg, str(model_dir))
    written = set(os.listdir(model_dir))
    assert {"config.yaml", "data_info.json"} <= written
    assert not written & {"export", "export_tokens", "model.keras", "metrics.json"}


@pytest.mark.slow
def test_a_failed_export_leaves_the_previous_export_and_metrics(tmp_path, tiny_config,
                                                               monkeypatch):
    model_dir = tmp_path / "run"
    cfg = tiny_config()
    train_lib.train(cfg, str(model_dir))
    snapshot = {path: (model_dir / path).read_bytes() for path in
                ("metrics.json", "model.keras", "export/saved_model.pb")}

    def disk_full(self, filepath, **kwargs):
        with open(os.path.join(filepath, "saved_model.pb"), "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    # ExportArchive() returns the backend's archive class; its write_out writes the files.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train_lib.train(cfg, str(model_dir))  # the same command again: retrains
    for path, content in snapshot.items():
        assert (model_dir / path).read_bytes() == content, path
    leftovers = [n for n in os.listdir(model_dir) if ".tmp-" in n or ".old-" in n]
    assert leftovers == []


def test_stop_on_non_finite_loss_names_the_step():
    callback = guards.StopOnNonFiniteLoss()
    callback.on_epoch_begin(2)
    callback.on_train_batch_end(4, {"loss": 0.7})
    with pytest.raises(guards.TrainingDiverged, match="became inf at epoch 3, step 6"):
        callback.on_train_batch_end(5, {"loss": float("inf")})
