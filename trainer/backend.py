"""Which Keras backend a process runs: ``runtime.backend`` (or ``KERAS_BACKEND``).

The models use ``keras.ops`` only, so they train under TensorFlow (tf.distribute
strategies) and under JAX (``keras.distribution``; the TPU path, since no TensorFlow 2.21
TPU build exists). tf.data with in-graph tf-text tokenization feeds both from the host.

Keras fixes its backend when it is first imported, and ``import tensorflow`` imports
Keras, so the choice must be made before either: ``python -m trainer.task`` reads the
config first (trainer/config.py imports neither) and calls :func:`select`. A process that
already imported Keras under another backend (a notebook kernel) gets a clear error
instead of a silent mix; set ``KERAS_BACKEND`` before the first import there.

This module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from trainer.errors import UserInputError

BACKENDS = ("tensorflow", "jax")

# What each backend needs beyond the base install, for the error message.
_INSTALL_HINT = {
    "jax": "pip install -e '.[jax]' (CPU or GPU: add jax[cuda12]) or '.[tpu]' on a TPU VM",
    "tensorflow": "pip install -e .",
}


def resolve(requested: str = "auto", environ=None) -> str:
    """``requested``, with ``auto`` read from ``KERAS_BACKEND`` (Keras' default:
    tensorflow)."""
    environ = os.environ if environ is None else environ
    name = requested if requested != "auto" else environ.get("KERAS_BACKEND", "tensorflow")
    if name not in BACKENDS:
        where = "KERAS_BACKEND" if requested == "auto" else "runtime.backend"
        raise UserInputError(f"{where}={name!r} is not a backend this project runs on; use "
                             f"one of {BACKENDS}")
    return name


def installed(name: str) -> bool:
    """Whether the backend's package can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


def current() -> str | None:
    """The backend of the Keras already imported in this process, or None."""
    keras = sys.modules.get("keras")
    if keras is None:
        return None
    return keras.backend.backend()


def select(requested: str = "auto") -> str:
    """Makes ``requested`` the backend of this process and returns its name.

    Sets ``KERAS_BACKEND`` when Keras is not imported yet; otherwise checks that the
    imported Keras runs ``requested``. Raises :class:`UserInputError` (before anything is
    written) when the backend is unknown, not installed, or not the one Keras runs.
    """
    name = resolve(requested)
    if not installed(name):
        raise UserInputError(f"runtime.backend={name} but {name} is not installed; "
                             f"{_INSTALL_HINT[name]}")
    running = current()
    if running is None:
        os.environ["KERAS_BACKEND"] = name
    elif running != name:
        raise UserInputError(
            f"runtime.backend={name} but this process already imported Keras with the "
            f"{running} backend; set KERAS_BACKEND={name} before Python imports keras or "
            "tensorflow (in a notebook: in the first cell, after restarting the kernel), or "
            f"set runtime.backend={running}")
    return name


def compiled_forward(model, method: str | None = None):
    """``model(x, training=False)`` (or ``model.<method>(x, training=False)``) compiled once
    for the running backend: a ``tf.function`` under TensorFlow, ``jax.jit`` over the
    model's stateless call under JAX (the current weights are read at each call). ``x`` is
    a dict of tensors or arrays; returns backend tensors."""
    import keras  # pylint: disable=import-outside-toplevel  # keep this module Keras-free

    target = getattr(model, method) if method else model
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        return tf.function(lambda x: target(x, training=False), reduce_retracing=True)
    import jax  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel

    def pure(trainable, non_trainable, x):
        # Every variable read inside becomes the traced value given here.
        with keras.StatelessScope(state_mapping=list(zip(
                model.trainable_variables + model.non_trainable_variables,
                list(trainable) + list(non_trainable)))):
            return target(x, training=False)

    jitted = jax.jit(pure)

    def forward(x):
        return jitted([v.value for v in model.trainable_variables],
                      [v.value for v in model.non_trainable_variables],
                      {k: np.asarray(v) for k, v in x.items()})

    forward.jitted = jitted  # for cost analysis (trainer/training/distill_lib.py)
    return forward


def run_in_tensorflow(command: list[str]) -> str:
    """Runs ``python -m trainer.task <command>`` in a child process under the TensorFlow
    backend and returns its stdout; raises RuntimeError with the child's error output.

    What only TensorFlow does (the SavedModel export, explanations by TensorFlow
    gradients) runs there when this process trains under JAX: the run directory is the
    interface, and Keras' backend is fixed per process."""
    import subprocess  # pylint: disable=import-outside-toplevel

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "trainer.task", *command], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode == 2:  # the command's own one-line message about the user's input
        lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        raise UserInputError(lines[-1][len("error: "):] if lines else done.stderr[-2000:])
    if done.returncode != 0:
        raise RuntimeError(f"`python -m trainer.task {' '.join(command)}` under the "
                           f"TensorFlow backend failed (exit {done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return done.stdout
