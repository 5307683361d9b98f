"""Guards around a training run: one live run per run directory, and no training on (or
export of) weights a non-finite loss has broken.

- :class:`RunLock`: ``model_dir/.lock``, held with ``fcntl.flock`` for the whole run. The
  kernel releases a flock when its process dies, however it dies (SIGKILL included), so a
  killed run never leaves the directory locked; the file's content (pid, host, start time)
  only helps the error message. Local directories only: object stores (``gs://``) have no
  locks, and there the run is not guarded.
- :class:`StopOnNonFiniteLoss`: a callback that ends ``fit`` with :class:`TrainingDiverged`
  at the first batch whose loss is NaN or infinite. Raising (rather than Keras'
  ``TerminateOnNaN``, which stops and lets the run go on to save and export) means nothing
  is written after it: ``backup/`` keeps the last finished epoch, ``checkpoints/`` the best
  one, and the previous export and metrics (if any) stay as they were.
"""

from __future__ import annotations

import math
import os
import socket
import time

import keras

from trainer.errors import RunDirError, UserInputError

try:  # POSIX; on other systems runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_FILE = ".lock"


class TrainingDiverged(UserInputError):
    """The loss became NaN or infinite."""


class RunLock:
    """Exclusive hold on a local run directory while a run writes it (a context manager).

    Raises :class:`trainer.errors.RunDirError` naming the holder when another live process
    holds it."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._handle = None

    @property
    def supported(self) -> bool:
        return fcntl is not None and "://" not in self.model_dir

    def check(self) -> None:
        """Raises if a live run holds the directory; takes nothing (writes nothing)."""
        if not self.supported or not os.path.exists(self.path):
            return
        with open(self.path, "a+") as handle:
            self._try_lock(handle)
            fcntl.flock(handle, fcntl.LOCK_UN)

    def _try_lock(self, handle) -> None:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunDirError(
                f"{self.model_dir}: another run is writing this directory ({holder}); wait "
                "for it to finish, stop it, or use another --model_dir") from None

    def __enter__(self) -> "RunLock":
        if not self.supported:
            return self
        os.makedirs(self.model_dir, exist_ok=True)
        handle = open(self.path, "a+")  # pylint: disable=consider-using-with
        try:
            self._try_lock(handle)
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises :class:`TrainingDiverged` at the first batch with a non-finite loss."""

    def __init__(self, model_dir: str | None = None):
        super().__init__()
        self.model_dir = model_dir
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        kept = (f"; {self.model_dir}/backup keeps the state after epoch {self._epoch} and "
                f"checkpoints/ the best epoch so far, and nothing was exported"
                if self.model_dir else "")
        raise TrainingDiverged(
            f"the training loss became {float(loss)} at epoch {self._epoch + 1}, step "
            f"{batch + 1}{kept}; lower train.learning_rate, keep train.clipnorm > 0, or check "
            "the data for extreme values (a new --model_dir, since the config changes)")
