"""The one place a tf.distribute strategy is built, from ``config.runtime``.

``auto`` picks a TPU if a resolver finds one, MirroredStrategy if several GPUs are visible,
else the default strategy. The resolver and device lister are arguments so tests can hand
in fakes; the default, one-device and two-logical-CPU mirrored paths run for real in tests.
"""

from __future__ import annotations

import glob
import logging
import os

import keras
import tensorflow as tf

from trainer.config import RuntimeConfig

log = logging.getLogger(__name__)


def configure_logical_cpus(count: int) -> None:
    """Splits the host CPU into ``count`` logical devices (must run before TF uses devices).

    Lets MirroredStrategy run over several "devices" on a laptop or in CI.
    """
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as err:
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != count:
            raise RuntimeError(
                f"runtime.logical_cpus={count} must be applied before TensorFlow initialises "
                f"its devices ({existing} logical CPUs exist already); set it at process "
                "start") from err


def _tpu_hinted() -> bool:
    """Whether this host plausibly has a TPU (Colab, a TPU VM, or a named TPU)."""
    return bool(os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME")
                or glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _default_tpu_resolver(tpu: str):
    # Without a hint the resolver would query the GCE metadata server, which hangs on
    # machines without network access; so only try it where a TPU can exist.
    if not tpu and not _tpu_hinted():
        raise ValueError("no TPU hinted on this host")
    return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)


def _find_tpu(tpu: str, resolver_fn):
    try:
        resolver = resolver_fn(tpu)
        if not resolver.master():  # an empty master means no TPU here
            return None
        return resolver
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        return None


def set_precision(runtime: RuntimeConfig) -> None:
    """Sets Keras' global dtype policy from ``runtime.precision`` (before building models).

    Layers then compute in bfloat16/float16 with float32 variables; BERTRecommender keeps
    its click head in float32 so logits, the loss and served probabilities stay float32.
    """
    keras.mixed_precision.set_global_policy(runtime.precision)


def make_strategy(runtime: RuntimeConfig, tpu_resolver_fn=_default_tpu_resolver,
                  list_gpus_fn=None) -> tf.distribute.Strategy:
    """Returns the strategy named by ``runtime.strategy`` (see module docstring)."""
    list_gpus_fn = list_gpus_fn or (lambda: tf.config.list_logical_devices("GPU"))
    configure_logical_cpus(runtime.logical_cpus)
    name = runtime.strategy
    if name == "auto":
        if runtime.tpu or _find_tpu(runtime.tpu, tpu_resolver_fn) is not None:
            name = "tpu"
        elif len(list_gpus_fn()) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "tpu":
        resolver = _find_tpu(runtime.tpu, tpu_resolver_fn)
        if resolver is None:
            raise RuntimeError(f"runtime.strategy=tpu but no TPU was found (runtime.tpu="
                               f"{runtime.tpu!r}); use strategy auto or give the TPU name")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "multi_worker":
        # Reads the cluster from the TF_CONFIG environment variable.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        devices = runtime.devices or None
        if devices is None and runtime.logical_cpus > 1 and not list_gpus_fn():
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    elif name == "one_device":
        device = (runtime.devices or ["/gpu:0" if list_gpus_fn() else "/cpu:0"])[0]
        strategy = tf.distribute.OneDeviceStrategy(device)
    else:
        strategy = tf.distribute.get_strategy()
    log.info("strategy %s with %d replica(s)", type(strategy).__name__,
             strategy.num_replicas_in_sync)
    return strategy
