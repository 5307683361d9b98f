"""Strategy selection (with fake resolvers) and a real MirroredStrategy over 2 logical CPUs."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.conftest import MICRO_OVERRIDES, REPO
from trainer import distribute
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


def test_mirrored_training_over_two_logical_cpus(tmp_path):
    """A few real training steps under MirroredStrategy with 2 replicas (own process, since
    logical devices must be configured before TensorFlow starts)."""
    model_dir = tmp_path / "run"
    args = [sys.executable, "-m", "trainer.task", "train",
            "--config", os.path.join(REPO, "configs", "tiny.yaml"), "--model_dir", str(model_dir),
            "--set", "runtime.strategy=mirrored", "--set", "runtime.logical_cpus=2",
            "--set", "train.steps_per_epoch=3"]
    for override in MICRO_OVERRIDES:
        args += ["--set", override]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(model_dir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["train"]["replicas"] == 2
    assert metrics["train"]["steps_per_epoch"] == 3
    assert metrics["test"]["examples"] > 0
