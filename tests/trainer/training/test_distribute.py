"""Strategy selection (with fake resolvers) and a real MirroredStrategy over 2 logical CPUs."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.harness import MICRO_OVERRIDES, REPO
from trainer.training import distribute
from trainer.config import RuntimeConfig


class FakeResolver:
    def __init__(self, master):
        self._master = master

    def master(self):
        return self._master


def no_tpu(_name):
    raise ValueError("no TPU")


def test_auto_is_default_strategy_without_accelerators():
    strategy = distribute.make_strategy(RuntimeConfig(strategy="auto"), tpu_resolver_fn=no_tpu,
                                        list_gpus_fn=lambda: [])
    assert strategy is tf.distribute.get_strategy()


def test_auto_picks_mirrored_for_several_gpus(monkeypatch):
    made = {}

    class FakeMirrored:
        num_replicas_in_sync = 2

        def __init__(self, devices=None):
            made["devices"] = devices

    monkeypatch.setattr(tf.distribute, "MirroredStrategy", FakeMirrored)
    strategy = distribute.make_strategy(RuntimeConfig(strategy="auto"), tpu_resolver_fn=no_tpu,
                                        list_gpus_fn=lambda: ["/gpu:0", "/gpu:1"])
    assert isinstance(strategy, FakeMirrored) and made["devices"] is None


def test_auto_picks_tpu_when_a_resolver_finds_one(monkeypatch):
    calls = []
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", calls.append)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", calls.append)

    class FakeTPUStrategy:
        num_replicas_in_sync = 8

        def __init__(self, resolver):
            self.resolver = resolver

    monkeypatch.setattr(tf.distribute, "TPUStrategy", FakeTPUStrategy)
    resolver = FakeResolver("grpc://10.0.0.2:8470")
    strategy = distribute.make_strategy(RuntimeConfig(strategy="auto"),
                                        tpu_resolver_fn=lambda name: resolver,
                                        list_gpus_fn=lambda: ["/gpu:0", "/gpu:1"])
    assert isinstance(strategy, FakeTPUStrategy) and strategy.resolver is resolver
    assert calls == [resolver, resolver]


def test_explicit_tpu_without_one_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no TPU was found"):
        distribute.make_strategy(RuntimeConfig(strategy="tpu"),
                                 tpu_resolver_fn=lambda name: FakeResolver(""))


def test_default_resolver_does_not_probe_without_a_hint(monkeypatch):
    for var in ("COLAB_TPU_ADDR", "TPU_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distribute.glob, "glob", lambda pattern: [])
    assert distribute._find_tpu("", distribute._default_tpu_resolver) is None


def test_one_device_strategy():
    strategy = distribute.make_strategy(RuntimeConfig(strategy="one_device"),
                                        list_gpus_fn=lambda: [])
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)


def test_tpu_vm_resolver_is_local_even_with_an_empty_master(monkeypatch):
    """On a TPU VM TensorFlow's resolver is named "local" and reports no master address."""
    monkeypatch.delenv("COLAB_TPU_ADDR", raising=False)
    monkeypatch.setattr(distribute.glob, "glob",
                        lambda pattern: ["/dev/accel0"] if "accel" in pattern else [])
    names = []

    def resolver_fn(name):
        names.append(name)
        return FakeResolver("")

    assert distribute._find_tpu("", resolver_fn) is not None and names == ["local"]
    monkeypatch.setattr(distribute.glob, "glob", lambda pattern: [])
    assert distribute._find_tpu("", lambda name: FakeResolver("")) is None


@pytest.mark.parametrize("tf_config, count", [
    ("", 0),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}),
     2),
    (json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"], "ps": ["d:4"]}}), 3),
])
def test_tf_config_task_count(tf_config, count):
    assert distribute.tf_config_task_count({"TF_CONFIG": tf_config}) == count


def test_bad_tf_config_is_a_clear_error():
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.tf_config_task_count({"TF_CONFIG": "{worker: [a]}"})


def test_auto_picks_multi_worker_when_tf_config_names_a_cluster(monkeypatch):
    class FakeMultiWorker:
        num_replicas_in_sync = 2

        def reduce(self, reduce_op, value, axis=None):
            return value

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorker)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    strategy = distribute.make_strategy(RuntimeConfig(strategy="auto"), tpu_resolver_fn=no_tpu,
                                        list_gpus_fn=lambda: [])
    assert isinstance(strategy, FakeMultiWorker)


def test_multi_worker_reduce_takes_nests_and_scalar_logs():
    """The wrapper behind the two-worker run (tensorflow/tensorflow#72388), on the one-device
    default strategy: a nest reduces leaf by leaf; axis=0 on a scalar reduces across replicas."""
    strategy = distribute._keras_compatible_reduce(tf.distribute.OneDeviceStrategy("/cpu:0"))
    batch = {"token_ids": tf.constant([[1, 2], [3, 4]]), "label": tf.constant([0.0, 1.0])}
    reduced = strategy.reduce("MEAN", batch, axis=None)
    assert reduced["token_ids"].numpy().tolist() == [[1, 2], [3, 4]]
    assert float(strategy.reduce("MEAN", tf.constant(0.25), axis=0)) == 0.25
    assert float(strategy.reduce("MEAN", tf.constant([1.0, 3.0]), axis=0)) == 2.0


@pytest.mark.parametrize("cluster, task_type, task_id, chief", [
    ({"worker": ["a:1", "b:2"]}, "worker", 0, True),
    ({"worker": ["a:1", "b:2"]}, "worker", 1, False),
    ({"chief": ["a:1"], "worker": ["b:2"]}, "chief", 0, True),
    ({"chief": ["a:1"], "worker": ["b:2"]}, "worker", 0, False),
])
def test_only_the_chief_owns_the_run_directory(monkeypatch, tmp_path, cluster, task_type,
                                               task_id, chief):
    class FakeMultiWorker:
        def __init__(self):
            self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
                tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)

    monkeypatch.setattr(tf.distribute, "MultiWorkerMirroredStrategy", FakeMultiWorker)
    monkeypatch.setattr(distribute.tempfile, "tempdir", str(tmp_path))
    strategy = FakeMultiWorker()
    assert distribute.is_chief(strategy) is chief
    write_dir = distribute.worker_write_dir("gs://bucket/run", strategy)
    assert (write_dir == "gs://bucket/run") is chief
    if not chief:
        assert write_dir.startswith(str(tmp_path)) and os.path.isdir(write_dir)
    assert distribute.is_chief(tf.distribute.get_strategy())


@pytest.mark.parametrize("kind, count, capability, expected", [
    ("tpu", 0, (), ["runtime.backend=jax", "runtime.strategy=tpu",
                    "runtime.precision=mixed_bfloat16", "train.steps_per_execution=32"]),
    ("gpu", 1, (8, 0), ["runtime.strategy=one_device", "runtime.precision=mixed_bfloat16",
                        "train.jit_compile=true"]),
    ("gpu", 4, (7, 5), ["runtime.strategy=mirrored", "runtime.precision=mixed_float16",
                        "train.jit_compile=true"]),
    ("cpu", 1, (), ["runtime.strategy=default"]),
])
def test_accelerator_overrides_are_valid_config(kind, count, capability, expected):
    from trainer import config as config_lib

    overrides = distribute.Accelerator(kind, count, "x", capability).overrides()
    assert overrides == expected
    config_lib.load_config(os.path.join(REPO, "configs", "tiny.yaml"), overrides)


def test_detect_accelerator_with_fakes():
    tpu = FakeResolver("grpc://10.0.0.2:8470")
    assert distribute.detect_accelerator(lambda name: tpu, lambda: []).kind == "tpu"
    gpus = distribute.detect_accelerator(
        no_tpu, lambda: ["GPU:0", "GPU:1"],
        lambda device: {"device_name": "NVIDIA A100", "compute_capability": (8, 0)})
    assert (gpus.kind, gpus.count, gpus.name, gpus.compute_capability) == \
        ("gpu", 2, "NVIDIA A100", (8, 0))
    assert distribute.detect_accelerator(no_tpu, lambda: []).kind == "cpu"


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_multi_worker_mirrored_training_on_localhost(tmp_path):
    """Two processes, TF_CONFIG on loopback ports: MultiWorkerMirroredStrategy trains a few
    steps of the tiny config; only the chief (worker 0) writes the run directory, and the
    other worker's temporary directory is gone afterwards."""
    model_dir = tmp_path / "run"
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    args = [sys.executable, "-m", "trainer.task", "train",
            "--config", os.path.join(REPO, "configs", "tiny.yaml"), "--model_dir", str(model_dir),
            "--set", "runtime.strategy=multi_worker", "--set", "train.steps_per_epoch=3"]
    for override in MICRO_OVERRIDES:
        args += ["--set", override]
    processes = []
    for index in range(2):
        worker_tmp = tmp_path / f"tmp{index}"
        worker_tmp.mkdir()
        env = dict(os.environ, TMPDIR=str(worker_tmp), TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600))
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert "outputs:" in outputs[0][0] and "outputs:" not in outputs[1][0]
    with open(model_dir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["train"]["replicas"] == 2
    assert metrics["train"]["steps_per_epoch"] == 3
    assert metrics["test"]["examples"] > 0
    assert (model_dir / "export").is_dir() and (model_dir / "model.keras").is_file()
    # Worker 1 wrote only into its own temporary directory, which it removed.
    assert not [p for p in (tmp_path / "tmp1").iterdir() if p.name.startswith("bert_")]
