"""Shared fixtures (the constants and helpers the tests share are in tests/harness.py)."""

import os
import sys

import pytest

from tests.harness import MICRO_OVERRIDES, REPO, tiny_config

if REPO not in sys.path:
    sys.path.insert(0, REPO)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# The test files that take longest, heaviest first (from `pytest --durations=0` on a 2-core
# machine). `make test` hands whole files to its pytest-xdist workers in collection order
# (--dist loadfile --no-loadscope-reorder): starting with these, no worker is left alone
# with a long file at the end. A stale list only changes that order, never what runs.
HEAVIEST_FIRST = (
    "tests/trainer/training/test_resume.py", "tests/notebooks/test_notebooks.py",
    "tests/benchmarks/test_quality.py", "tests/trainer/training/test_train_lib.py",
    "tests/trainer/training/test_tune_lib.py", "tests/trainer/test_backends.py",
    "tests/models/test_harness.py", "tests/benchmarks/test_throughput.py",
    "tests/trainer/training/test_distill_lib.py", "tests/trainer/test_audit.py",
    "tests/trainer/test_frozen_two_tower.py", "tests/trainer/serving/test_retrieval.py",
    "tests/trainer/training/test_privacy.py", "tests/trainer/training/test_guards.py",
    "tests/models/test_two_tower.py", "tests/trainer/test_rerank.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


def pytest_configure(config):
    # Deselect with `-m "not slow"`; they still run by default (and in CI).
    config.addinivalue_line("markers", "slow: loads a pretrained model or runs for 30 s+")


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    """configs/tiny.yaml shrunk further; returns a function taking extra overrides."""
    return tiny_config


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One micro synthetic run of the cross-encoder (2 epochs), shared by the tests that
    read a run directory; they must not modify what it wrote. Returns ``(cfg, model_dir,
    metrics)``. (The two-tower twin is ``trained_two_tower_run``.)"""
    from trainer.training import train_lib

    cfg = tiny_config("train.epochs=2", "model.kind=cross_encoder", "model.pooling=first")
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
