"""benchmarks/device_check.py: the arrays it carries give the model what tf.data gives it,
and its GPU side trains the project's model with no TensorFlow installed."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.harness import MICRO_OVERRIDES, REPO

TINY = os.path.join(REPO, "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from benchmarks import device_check
    tmp = tmp_path_factory.mktemp("device_check")
    device_check.prepare(str(tmp / "data"), "", str(tmp / "work"), TINY, MICRO_OVERRIDES)
    return tmp


def test_carried_arrays_are_the_input_pipeline_features(prepared):
    from benchmarks import device_check
    from trainer import config as config_lib
    from trainer.data import input_pipeline
    from trainer.training import train_lib

    arrays = dict(np.load(prepared / "data" / "two_tower" / "arrays.npz"))
    cfg = config_lib.load_config(TINY, MICRO_OVERRIDES + ["runtime.precision=mixed_bfloat16"])
    data = train_lib.prepare_data(cfg, str(prepared / "work" / "two_tower"))
    packer = train_lib.make_packer(cfg, data.vocabulary, data)
    table = data.tables["validation"]
    (features, labels), = list(input_pipeline.make_dataset(table, len(table), packer=packer))
    carried = device_check._features("two_tower", arrays, "validation", np.arange(len(table)))
    assert set(carried) == set(features) - {"user_index"}  # the two-tower reads no user id
    for key, value in carried.items():
        np.testing.assert_array_equal(value, features[key].numpy(), key)
    np.testing.assert_array_equal(arrays["validation_label"], labels.numpy())


@pytest.mark.slow
def test_the_gpu_side_trains_without_tensorflow(prepared):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None  # the GPU machine has no TensorFlow
        from benchmarks import device_check
        device_check.run({str(prepared / 'data')!r}, {str(prepared / 'out')!r},
                         warmup_steps=1, spec_tflops=0, max_steps=4, matmul_n=128,
                         precision="float32")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr[-3000:]
    with open(prepared / "out" / "device_check.json") as f:
        report = json.load(f)
    (row,) = report["rows"]
    assert row["model"] == "two_tower" and row["precision"] == "float32"
    assert row["train_examples_per_s"] > 0 and row["train_flops_per_example"] > 0
    assert 0 < row["mfu_measured_peak"]
    assert 0.0 <= row["test"]["auc"] <= 1.0 and row["test"]["examples"] > 0
