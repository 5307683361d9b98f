"""The one place a distribution strategy is built, from ``config.runtime``.

Under the TensorFlow backend it is a tf.distribute strategy; under JAX
(``runtime.backend=jax``, trainer/backend.py) it is :class:`JaxStrategy`, which gives
the training library the same two things it uses, ``scope()`` and
``num_replicas_in_sync``, over ``keras.distribution.DataParallel``.

``auto`` picks a TPU if a resolver finds one, MultiWorkerMirroredStrategy if ``TF_CONFIG``
describes a cluster of several tasks (Vertex AI and other cloud jobs set it), MirroredStrategy
if several GPUs are visible, else the default strategy. The resolver and device lister are
arguments so tests can hand in fakes; the default, one-device, two-logical-CPU mirrored and
two-process multi-worker paths run for real in tests.

Multi-worker runs write only from the chief (:func:`is_chief`); the other workers write into
a private temporary directory (:func:`worker_write_dir`), the pattern of the TensorFlow
multi-worker guide, because every worker must still take part in each save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import tempfile

import keras
import tensorflow as tf

from trainer.config import RuntimeConfig
from trainer.errors import UserInputError

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


def _local_tpu_devices() -> bool:
    """TPU chips attached to this host (TPU VMs, Colab's TPU runtime)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _tpu_hinted() -> bool:
    """Whether this host plausibly has a TPU (Colab, a TPU VM, or a named TPU)."""
    return bool(os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME")
                or _local_tpu_devices())


def _default_tpu_resolver(tpu: str):
    # Without a hint the resolver would query the GCE metadata server, which hangs on
    # machines without network access; so only try it where a TPU can exist.
    if not tpu and not _tpu_hinted():
        raise ValueError("no TPU hinted on this host")
    return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)


def _tpu_vm() -> bool:
    """A TPU VM (Cloud TPU VM, Colab's TPU runtime): the chips are local devices."""
    return _local_tpu_devices() and not os.environ.get("COLAB_TPU_ADDR")


def _find_tpu(tpu: str, resolver_fn):
    """A TPU cluster resolver, or None. On a TPU VM the name is ``local`` and the
    resolver's master is empty by design; elsewhere an empty master means no TPU."""
    name = tpu or ("local" if _tpu_vm() else "")
    try:
        resolver = resolver_fn(name)
        if name != "local" and not resolver.master():
            return None
        return resolver
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        return None


def tf_config_task_count(environ=None) -> int:
    """How many tasks (chief + workers) the ``TF_CONFIG`` cluster has; 0 when unset."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as err:
        raise ValueError(f"TF_CONFIG is not valid JSON with a 'cluster' mapping: {err}") from None
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process owns the run directory: always, except for the non-chief
    workers of a multi-worker strategy (the chief, or worker 0 when there is no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_write_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """``model_dir`` on the chief; a fresh local temporary directory on other workers
    (delete it after the run)."""
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"bert_recommender_{resolver.task_type}{resolver.task_id}_")


@dataclasses.dataclass
class Accelerator:
    """What :func:`detect_accelerator` found: ``kind`` is tpu | gpu | cpu."""

    kind: str
    count: int
    name: str = ""
    compute_capability: tuple = ()

    def overrides(self) -> list[str]:
        """Runtime/train config overrides that suit this accelerator (``--set`` syntax).

        TPUs: bfloat16, XLA (TPUs always compile) and 32 steps per execution so the host
        loop does not starve the chips. GPUs: bfloat16 from Ampere (compute capability 8)
        on, float16 with loss scaling before; several GPUs train mirrored. CPUs: as is.
        """
        if self.kind == "tpu":
            # JAX: no TensorFlow 2.21 TPU build exists (see trainer/backend.py).
            return ["runtime.backend=jax", "runtime.strategy=tpu",
                    "runtime.precision=mixed_bfloat16", "train.steps_per_execution=32"]
        if self.kind == "gpu":
            precision = ("mixed_bfloat16" if self.compute_capability and
                         self.compute_capability[0] >= 8 else "mixed_float16")
            strategy = "mirrored" if self.count > 1 else "one_device"
            return [f"runtime.strategy={strategy}", f"runtime.precision={precision}",
                    "train.jit_compile=true"]
        return ["runtime.strategy=default"]


def detect_accelerator(tpu_resolver_fn=None, list_gpus_fn=None,
                       gpu_details_fn=None) -> Accelerator:
    """The accelerator this host offers (Colab, a cloud VM, a laptop), without building a
    strategy. The arguments are for tests, as in :func:`make_strategy`. Under the JAX
    backend JAX's own device list answers (:func:`detect_jax_accelerator`)."""
    if keras.backend.backend() == "jax" and tpu_resolver_fn is None and list_gpus_fn is None:
        return detect_jax_accelerator()
    tpu_resolver_fn = tpu_resolver_fn or _default_tpu_resolver
    list_gpus_fn = list_gpus_fn or (lambda: tf.config.list_physical_devices("GPU"))
    gpu_details_fn = gpu_details_fn or tf.config.experimental.get_device_details
    resolver = _find_tpu("", tpu_resolver_fn)
    if resolver is not None:
        return Accelerator("tpu", 0, resolver.master())
    gpus = list_gpus_fn()
    if gpus:
        details = gpu_details_fn(gpus[0]) or {}
        return Accelerator("gpu", len(gpus), details.get("device_name", ""),
                           tuple(details.get("compute_capability", ()) or ()))
    return Accelerator("cpu", 1)


def detect_jax_accelerator(list_devices_fn=None) -> Accelerator:
    """:func:`detect_accelerator` from JAX's devices (TPU cores, GPUs, else the CPU)."""
    devices = _jax_devices(list_devices_fn)
    kind = devices[0].platform
    if kind not in ("tpu", "gpu"):
        return Accelerator("cpu", 1)
    capability = getattr(devices[0], "compute_capability", "") or ""
    capability = tuple(int(p) for p in str(capability).split(".") if p.isdigit())
    return Accelerator(kind, len(devices), getattr(devices[0], "device_kind", ""), capability)


def set_precision(runtime: RuntimeConfig) -> None:
    """Sets Keras' global dtype policy from ``runtime.precision`` (before building models).

    Layers then compute in bfloat16/float16 with float32 variables; BERTRecommender keeps
    its click head in float32 so logits, the loss and served probabilities stay float32.
    """
    keras.mixed_precision.set_global_policy(runtime.precision)


def _keras_compatible_reduce(strategy: tf.distribute.Strategy) -> tf.distribute.Strategy:
    """Wraps ``strategy.reduce`` so Keras 3's ``fit`` works under MultiWorkerMirroredStrategy.

    Keras 3.15 makes two calls that CollectiveAllReduceStrategy refuses (known since Keras 3.0,
    tensorflow/tensorflow#72388): ``fit`` reduces the first batch, a nest of features and
    labels, in a single call ("Attempt to convert a value ({'user_index': PerReplica...})");
    and each step reduces the per-replica scalar logs with ``axis=0``, which a scalar lacks
    ("Invalid reduction dimension 0 for input with 0 dimensions"). Reducing leaf by leaf,
    and a scalar across replicas only, is what both calls mean.
    """
    reduce = strategy.reduce

    def reduce_leaf(reduce_op, leaf, axis):
        if axis is not None:
            local = strategy.experimental_local_results(leaf)[0]
            if local.shape.rank == 0:
                axis = None
        return reduce(reduce_op, leaf, axis=axis)

    def reduce_each(reduce_op, value, axis=None):
        return tf.nest.map_structure(lambda leaf: reduce_leaf(reduce_op, leaf, axis), value)

    strategy.reduce = reduce_each
    return strategy


def transformer_layout_map(device_mesh) -> "keras.distribution.LayoutMap":
    """Where each transformer weight lives on a ``("batch", "model")`` mesh, Megatron-style:
    attention heads and the feed-forward's inner dimension are split across the "model"
    axis, and so is the hidden axis of the token embedding table; everything else
    (LayerNorms, position/segment embeddings, heads, item biases) is replicated. The keys
    are keras-hub's variable paths, shared by the backbones and the item encoder."""
    layout = keras.distribution.LayoutMap(device_mesh)
    layout[".*token_embedding/embeddings"] = (None, "model")
    layout[".*(query|key|value)/kernel"] = (None, "model", None)
    layout[".*(query|key|value)/bias"] = ("model", None)
    layout[".*attention_output/kernel"] = ("model", None, None)
    layout[".*feedforward_intermediate_dense/kernel"] = (None, "model")
    layout[".*feedforward_intermediate_dense/bias"] = ("model",)
    layout[".*feedforward_output_dense/kernel"] = ("model", None)
    return layout


class JaxStrategy:
    """Data (and model) parallelism under the JAX backend, with the interface the training
    library uses from a tf.distribute strategy (``scope()``, ``num_replicas_in_sync``).

    Several devices (TPU cores, GPUs, or forced host CPUs) get
    ``keras.distribution.DataParallel``, set as Keras' global distribution: each global
    batch from tf.data is split across the devices and the weights are replicated, as
    under MirroredStrategy/TPUStrategy. With ``model_parallel`` = m > 1 the devices form a
    ``(devices / m, m)`` mesh and ``keras.distribution.ModelParallel`` also splits each
    transformer layer's weights over the m devices of a row
    (:func:`transformer_layout_map`): for backbones too large for one device's memory.
    One device needs no distribution.
    """

    def __init__(self, devices: list, model_parallel: int = 1):
        self.devices = list(devices)
        self.model_parallel = model_parallel
        self.distribution = None
        if model_parallel > 1:
            mesh = keras.distribution.DeviceMesh(
                (len(self.devices) // model_parallel, model_parallel), ("batch", "model"),
                devices=self.devices)
            self.distribution = keras.distribution.ModelParallel(
                layout_map=transformer_layout_map(mesh), batch_dim_name="batch")
        elif len(self.devices) > 1:
            self.distribution = keras.distribution.DataParallel(devices=self.devices)
        keras.distribution.set_distribution(self.distribution)

    @property
    def num_replicas_in_sync(self) -> int:
        """Data-parallel replicas: the global batch is ``train.batch_size`` times this."""
        return len(self.devices) // self.model_parallel

    @property
    def platform(self) -> str:
        """cpu | gpu | tpu: the platform of the devices."""
        return self.devices[0].platform

    def scope(self):
        """Variables created here are laid out by the distribution (replicated)."""
        return (self.distribution.scope() if self.distribution is not None
                else contextlib.nullcontext())


def force_host_cpus(count: int, environ=None) -> None:
    """Makes JAX's CPU platform show ``count`` devices (its counterpart of
    :func:`configure_logical_cpus`), so DataParallel runs on a laptop or in CI. Must run
    before JAX initialises its backends; a later call that would change the count fails."""
    environ = os.environ if environ is None else environ
    if count <= 1:
        return
    flag = f"--xla_force_host_platform_device_count={count}"
    flags = [f for f in environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count=")]
    environ["XLA_FLAGS"] = " ".join(flags + [flag])
    import jax  # pylint: disable=import-outside-toplevel  # JAX backend only

    existing = len(jax.devices("cpu"))
    if existing != count:
        raise RuntimeError(
            f"runtime.logical_cpus={count} must be applied before JAX initialises its "
            f"devices ({existing} CPU devices exist already); set it at process start or "
            f"export XLA_FLAGS={flag}")


def _jax_devices(list_devices_fn=None) -> list:
    """JAX's devices on its default platform (TPU, else GPU, else CPU)."""
    if list_devices_fn is not None:
        return list(list_devices_fn())
    import jax  # pylint: disable=import-outside-toplevel  # JAX backend only

    return list(jax.devices())


def make_jax_strategy(runtime: RuntimeConfig, list_devices_fn=None) -> JaxStrategy:
    """The JAX counterpart of :func:`make_strategy`: ``auto``/``mirrored``/``tpu`` use
    every device of JAX's default platform (a TPU host's cores, all GPUs), ``one_device``
    and ``default`` the first. ``tpu`` fails unless that platform is TPU. ``multi_worker``
    (several hosts: ``jax.distributed``) is not wired here."""
    if list_devices_fn is None:
        force_host_cpus(runtime.logical_cpus)
    devices = _jax_devices(list_devices_fn)
    name = runtime.strategy
    platform = devices[0].platform
    if name == "tpu" and platform != "tpu":
        raise UserInputError(
            f"runtime.strategy=tpu but JAX found no TPU (its devices: {len(devices)} x "
            f"{platform}); on a TPU VM install the '[tpu]' extra (jax[tpu]), or use "
            "runtime.strategy=auto")
    if name == "multi_worker":
        raise UserInputError(
            "runtime.strategy=multi_worker runs under runtime.backend=tensorflow; several "
            "JAX hosts (jax.distributed) are not supported here. On one TPU host use "
            "runtime.strategy=auto")
    if runtime.devices:
        wanted = set(runtime.devices)
        chosen = [d for d in devices if f"{d.platform}:{d.id}" in wanted]
        if len(chosen) != len(wanted):
            raise UserInputError(
                f"runtime.devices={runtime.devices}: under JAX name devices as platform:id "
                f"from {[f'{d.platform}:{d.id}' for d in devices]}")
        devices = chosen
    elif name in ("one_device", "default"):
        devices = devices[:1]
    model_parallel = max(runtime.model_parallel, 1)
    if len(devices) % model_parallel:
        raise UserInputError(
            f"runtime.model_parallel={model_parallel} must divide the {len(devices)} "
            f"device(s) JAX trains on ({platform}); use a divisor, or 1")
    strategy = JaxStrategy(devices, model_parallel)
    log.info("JAX %s over %d device(s) (%s): %d data-parallel replica(s)",
             type(strategy.distribution).__name__ if strategy.distribution else "one device",
             len(devices), platform, strategy.num_replicas_in_sync)
    return strategy


def make_strategy(runtime: RuntimeConfig, tpu_resolver_fn=_default_tpu_resolver,
                  list_gpus_fn=None):
    """Returns the strategy named by ``runtime.strategy`` (see module docstring): a
    tf.distribute strategy, or :class:`JaxStrategy` under the JAX backend."""
    if keras.backend.backend() == "jax":
        return make_jax_strategy(runtime)
    list_gpus_fn = list_gpus_fn or (lambda: tf.config.list_logical_devices("GPU"))
    configure_logical_cpus(runtime.logical_cpus)
    name = runtime.strategy
    if name == "auto":
        if runtime.tpu or _find_tpu(runtime.tpu, tpu_resolver_fn) is not None:
            name = "tpu"
        elif tf_config_task_count() > 1:
            name = "multi_worker"
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
        strategy = _keras_compatible_reduce(tf.distribute.MultiWorkerMirroredStrategy())
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
