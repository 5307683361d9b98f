"""Shared fixtures: tiny configs, paths to ../shared assets (skipped cleanly when absent)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
MINILM_DIR = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")
MOVIELENS_SMALL_DIR = os.path.join(SHARED, "data", "ml-latest-small")

if REPO not in sys.path:
    sys.path.insert(0, REPO)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The Keras backend these tests run under (`make test-jax` runs the model tests and a short
# training run under JAX as well; trainer/backend.py).
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

# In-process SavedModel export (and anything calling a model from tf.function or a
# GradientTape) is TensorFlow's; under JAX a run exports from a TensorFlow child process,
# tested in tests/trainer/test_backends.py.
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow-backend path (SavedModel, tf gradients)")


def pytest_configure(config):
    # Deselect with `-m "not slow"`; they still run by default (and in CI).
    config.addinivalue_line("markers", "slow: loads a pretrained model or runs for 30 s+")

# Smaller than configs/tiny.yaml: keeps each end-to-end training run to a few seconds.
MICRO_OVERRIDES = [
    "data.synthetic.num_items=40", "data.synthetic.num_users=24",
    "data.synthetic.impressions_per_user=4", "data.synthetic.candidates_per_impression=3",
    "data.vocab_size=100", "train.epochs=1", "train.batch_size=8",
]


@pytest.fixture
def tiny_config():
    """configs/tiny.yaml shrunk further; returns a function taking extra overrides."""
    from trainer import config as config_lib

    def make(*overrides):
        return config_lib.load_config(os.path.join(REPO, "configs", "tiny.yaml"),
                                      MICRO_OVERRIDES + list(overrides))
    return make


def require_shared(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One micro synthetic run of the cross-encoder (2 epochs), shared by the tests that
    read a run directory; they must not modify what it wrote. Returns ``(cfg, model_dir,
    metrics)``. (The two-tower twin is ``trained_two_tower_run``.)"""
    from trainer import config as config_lib
    from trainer.training import train_lib

    cfg = config_lib.load_config(os.path.join(REPO, "configs", "tiny.yaml"), [
        "data.synthetic.num_items=40", "data.synthetic.num_users=24",
        "data.synthetic.impressions_per_user=4", "data.synthetic.candidates_per_impression=3",
        "data.vocab_size=100", "train.epochs=2", "train.batch_size=8",
        "model.kind=cross_encoder", "model.pooling=first"])
    model_dir = str(tmp_path_factory.mktemp("run") / "tiny")
    results = train_lib.train(cfg, model_dir)
    return cfg, model_dir, results


@pytest.fixture(scope="session")
def trained_two_tower_run(tmp_path_factory):
    """One micro two-tower run (hybrid text + ids) trained through the CLI, shared like
    ``trained_run``. Returns ``(model_dir, metrics)``."""
    import json

    from trainer import task

    model_dir = str(tmp_path_factory.mktemp("run") / "two_tower")
    overrides = MICRO_OVERRIDES + ["train.epochs=2", "model.kind=two_tower",
                                   "model.item_ids=true"]
    args = ["train", "--config", os.path.join(REPO, "configs", "tiny.yaml"),
            "--model_dir", model_dir]
    for override in overrides:
        args += ["--set", override]
    assert task.main(args) == 0
    with open(os.path.join(model_dir, "metrics.json")) as f:
        return model_dir, json.load(f)
