"""One model on two engines: backend selection, the JAX strategy, and JAX runs that serve
the same SavedModel a TensorFlow run does (trainer/backend.py, trainer/training/distribute.py).

`make test` runs this file under TensorFlow and again under JAX (KERAS_BACKEND=jax)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.harness import BACKEND, MICRO_OVERRIDES, REPO
from trainer import backend, config as config_lib, runs
from trainer.errors import ConfigError, UserInputError

TINY = os.path.join(REPO, "configs", "tiny.yaml")
OTHER = "jax" if BACKEND == "tensorflow" else "tensorflow"


def test_resolve_reads_keras_backend_for_auto():
    assert backend.resolve("auto", {"KERAS_BACKEND": "jax"}) == "jax"
    assert backend.resolve("auto", {}) == "tensorflow"
    assert backend.resolve("tensorflow", {"KERAS_BACKEND": "jax"}) == "tensorflow"
    with pytest.raises(UserInputError, match="KERAS_BACKEND='torch'"):
        backend.resolve("auto", {"KERAS_BACKEND": "torch"})


def test_config_refuses_an_unknown_backend():
    with pytest.raises(ConfigError, match="runtime.backend"):
        config_lib.load_config(TINY, ["runtime.backend=torch"])


def test_select_refuses_a_backend_other_than_the_one_keras_runs():
    import keras  # noqa: F401  (this process has imported Keras)
    assert backend.select(BACKEND) == BACKEND
    with pytest.raises(UserInputError, match=f"KERAS_BACKEND={OTHER} before Python imports"):
        backend.select(OTHER)


def test_select_refuses_a_backend_that_is_not_installed(monkeypatch):
    monkeypatch.setattr(backend, "installed", lambda name: name != "jax")
    with pytest.raises(UserInputError, match=r"jax is not installed; pip install -e '\.\[jax\]'"):
        backend.select("jax")


def test_cli_refuses_a_missing_backend_before_writing(tmp_path, monkeypatch, capsys):
    from trainer import task
    monkeypatch.setattr(backend, "installed", lambda name: name != "jax")
    model_dir = tmp_path / "run"
    code = task.main(["train", "--config", TINY, "--model_dir", str(model_dir),
                      "--set", "runtime.backend=jax"])
    assert code == 2
    assert "jax is not installed" in capsys.readouterr().err
    assert not model_dir.exists()


class FakeDevice:
    def __init__(self, platform, id_, kind="", capability=""):
        self.platform, self.id, self.device_kind = platform, id_, kind
        self.compute_capability = capability


def test_jax_strategy_refuses_what_it_cannot_do():
    from trainer.training import distribute
    from trainer.config import RuntimeConfig
    cpus = lambda: [FakeDevice("cpu", 0)]  # noqa: E731
    with pytest.raises(UserInputError, match=r"JAX found no TPU \(its devices: 1 x cpu\)"):
        distribute.make_jax_strategy(RuntimeConfig(strategy="tpu"), cpus)
    with pytest.raises(UserInputError, match="multi_worker runs under runtime.backend="
                       "tensorflow"):
        distribute.make_jax_strategy(RuntimeConfig(strategy="multi_worker"), cpus)
    with pytest.raises(UserInputError, match=r"platform:id from \['cpu:0'\]"):
        distribute.make_jax_strategy(RuntimeConfig(devices=["/gpu:0"]), cpus)


def test_model_parallel_is_checked_against_the_backend_and_the_sizes():
    with pytest.raises(ConfigError, match="runtime.model_parallel' > 1 needs runtime.backend="
                       "jax"):
        config_lib.load_config(TINY, ["runtime.backend=tensorflow",
                                      "runtime.model_parallel=2"])
    with pytest.raises(ConfigError, match=r"'model.num_heads' \(2\) must be divisible by "
                       r"'runtime.model_parallel' \(4\)"):
        config_lib.load_config(TINY, ["runtime.backend=jax", "runtime.model_parallel=4"])
    from trainer.training import distribute
    from trainer.config import RuntimeConfig
    with pytest.raises(UserInputError, match="model_parallel=2 must divide the 3 device"):
        distribute.make_jax_strategy(RuntimeConfig(model_parallel=2),
                                     lambda: [FakeDevice("gpu", i) for i in range(3)])


def test_jax_accelerator_detection_and_its_overrides():
    from trainer.training import distribute
    tpu = distribute.detect_jax_accelerator(
        lambda: [FakeDevice("tpu", i, "TPU v5 lite") for i in range(4)])
    assert (tpu.kind, tpu.count, tpu.name) == ("tpu", 4, "TPU v5 lite")
    assert {"runtime.backend=jax", "runtime.strategy=tpu", "runtime.precision=mixed_bfloat16",
            "train.steps_per_execution=32"} == set(tpu.overrides())
    gpu = distribute.detect_jax_accelerator(lambda: [FakeDevice("gpu", 0, "H200", "9.0")])
    assert gpu.compute_capability == (9, 0)
    assert "runtime.precision=mixed_bfloat16" in gpu.overrides()
    assert distribute.detect_jax_accelerator(lambda: [FakeDevice("cpu", 0)]).kind == "cpu"


# A JAX process (two forced host CPUs: DataParallel for real) trains a cross-encoder and a
# two-tower run and writes the JAX logits of their validation rows.
JAX_RUNS = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from trainer import config as config_lib
    from trainer import runs
    from trainer.training import train_lib
    from trainer.evaluation import scoring
    out = sys.argv[1]
    for name, extra in json.loads(sys.argv[2]).items():
        cfg = config_lib.load_config({tiny!r}, {micro!r} + extra)
        model_dir = os.path.join(out, name)
        results = train_lib.train(cfg, model_dir)
        import keras
        prepared = train_lib.prepare_data(cfg, model_dir)
        packer = runs.open_run(model_dir).featurizer
        model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
        logits = scoring.predict_logits(model, prepared.tables["validation"], packer, 64)
        np.save(os.path.join(model_dir, "jax_logits.npy"), logits)
        print(name, results["train"]["backend"], results["train"]["replicas"])
    # Model parallelism lays the attention heads out across the two devices.
    import jax
    from bert_recommender.models.bert_recommender import BERTRecommender
    from trainer.training.distribute import JaxStrategy
    with JaxStrategy(jax.devices(), model_parallel=2).scope():
        model = BERTRecommender.from_sizes(vocabulary_size=100, num_layers=1, num_heads=2,
                                           hidden_dim=16, intermediate_dim=32,
                                           max_sequence_length=16)
        model({{"token_ids": np.ones((2, 16), "int32"),
               "segment_ids": np.zeros((2, 16), "int32")}})
    kernel = [v for v in model.weights if v.path.endswith("query/kernel")][0]
    print("QUERY_SPEC", tuple(kernel.value.sharding.spec))
""")


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="runs the JAX side in a child process")
def test_jax_runs_serve_what_they_learned(tmp_path):
    """A run trained under JAX on two devices writes the same artefacts a TensorFlow run
    does: model.keras scores identically under TensorFlow, the raw-string SavedModel
    equals the JAX model, and the two-tower export retrieves."""
    # The two-tower trains data parallel over the two devices and is exported (under JAX
    # the export is a TensorFlow child process); the cross-encoder as one replica of a
    # model split over them, not exported (the same child process again cost CI about
    # 30 s; a data-parallel cross-encoder run added 50 s and nothing the two-tower does
    # not already cover).
    trained = {"two_tower": ["model.item_ids=true"],
               "cross_model_parallel": ["model.kind=cross_encoder", "model.pooling=first",
                                        "runtime.model_parallel=2", "train.export=false"]}
    trained = {name: extra + ["runtime.backend=jax", "runtime.logical_cpus=2"]
               for name, extra in trained.items()}
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO)
    script = JAX_RUNS.format(tiny=TINY, micro=MICRO_OVERRIDES)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), json.dumps(trained)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "two_tower jax 2" in done.stdout
    assert "cross_model_parallel jax 1" in done.stdout
    assert "QUERY_SPEC (None, 'model', None)" in done.stdout

    import keras
    import tensorflow as tf

    from trainer.serving import export
    from trainer.training import train_lib
    from trainer.evaluation import scoring
    for name in trained:
        model_dir = str(tmp_path / name)
        jax_logits = np.load(os.path.join(model_dir, "jax_logits.npy"))
        cfg = runs.read_config(model_dir)
        assert cfg.runtime.backend == "jax"
        table = train_lib.prepare_data(cfg, model_dir).tables["validation"]
        run = runs.open_run(model_dir)
        model = keras.models.load_model(os.path.join(model_dir, "model.keras"))
        np.testing.assert_allclose(scoring.predict_logits(model, table, run.featurizer, 64),
                                   jax_logits, atol=1e-4)
        with open(os.path.join(model_dir, "metrics.json")) as f:
            assert json.load(f)["train"]["backend"] == "jax"
        assert not [p for p in os.listdir(model_dir) if p.startswith(".staging")]
    # The two-tower's served raw-string signature is the JAX model, and it retrieves.
    two_tower = str(tmp_path / "two_tower")
    assert os.path.isdir(os.path.join(two_tower, "export_tokens"))
    run = runs.open_run(two_tower)
    table = train_lib.prepare_data(runs.read_config(two_tower), two_tower).tables["validation"]
    served = export.load_serving_fn(os.path.join(two_tower, "export"))(
        **run.kind.serving_request(run.featurizer, table))
    np.testing.assert_allclose(served["logit"].numpy(),
                               np.load(os.path.join(two_tower, "jax_logits.npy")), atol=1e-4)
    retrieve = export.load_serving_fn(os.path.join(two_tower, "export"), "retrieve")
    top = retrieve(query=tf.constant([""]), history_text=tf.constant([[""] * 5]),
                   history_ids=tf.constant([[""] * 5]), k=tf.constant(3))
    assert top["item_ids"].shape == (1, 3)
