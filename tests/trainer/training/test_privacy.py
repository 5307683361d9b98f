"""DP-SGD (trainer/training/privacy.py): the accountant against dp-accounting and a closed form, the
per-example clipping bound, Poisson sampling, the refusals, and a private run end to end."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import norm

from tests.harness import MICRO_OVERRIDES, REPO
from trainer import config as config_lib
from trainer import kinds
from trainer.training import privacy
from trainer.errors import ConfigError

TINY = os.path.join(REPO, "configs", "tiny.yaml")


def test_epsilon_is_dp_accountings_for_the_same_parameters():
    import dp_accounting
    from dp_accounting import pld, rdp

    direct = pld.PLDAccountant()
    direct.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.TruncatedSubsampledGaussianDpEvent(
            dataset_size=60000, sampling_probability=64 / 60000, truncated_batch_size=96,
            noise_multiplier=0.6), 1000))
    assert privacy.epsilon(60000, 64, 96, 0.6, 1000, 1 / 60000) == pytest.approx(
        direct.get_epsilon(1 / 60000), rel=1e-9)
    # Cut where a run almost never is, the truncation costs nothing: the untruncated
    # Poisson PLD figure, which the RDP accountant (another method) bounds loosely.
    untruncated = pld.PLDAccountant()
    untruncated.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        64 / 60000, dp_accounting.GaussianDpEvent(0.6)), 1000))
    ours = privacy.epsilon(60000, 64, 120, 0.6, 1000, 1 / 60000)
    assert ours == pytest.approx(untruncated.get_epsilon(1 / 60000), rel=0.01)
    loose = rdp.RdpAccountant()
    loose.compose(dp_accounting.PoissonSampledDpEvent(
        64 / 60000, dp_accounting.GaussianDpEvent(0.6)), 1000)
    assert ours <= loose.get_epsilon(1 / 60000) <= 2.0 * ours


def test_epsilon_of_full_batches_is_the_analytic_gaussian():
    """With every row in every step (q = 1) k steps are one Gaussian mechanism of noise
    sigma / sqrt(k), whose exact delta(epsilon) is Balle & Wang's (ICML 2018)."""
    sigma, steps, delta = 2.0, 4, 1e-5
    effective = sigma / math.sqrt(steps)

    def exact_delta(eps):
        return (norm.cdf(-eps * effective + 0.5 / effective)
                - math.exp(eps) * norm.cdf(-eps * effective - 0.5 / effective))

    eps = privacy.epsilon(100, 100, 100, sigma, steps, delta)
    assert exact_delta(eps) == pytest.approx(delta, rel=0.05)
    assert privacy.epsilon(100, 10, 20, 1.0, 0, delta) == 0.0


def test_each_rows_gradient_is_clipped_to_the_bound():
    import tensorflow as tf
    # Three rows, two variables; row norms (over both variables) 5, 0.5 and 13.
    first = tf.constant([[3.0, 0.0], [0.3, 0.0], [5.0, 0.0]])
    second = tf.constant([[[4.0]], [[0.4]], [[12.0]]])
    expected_batch, clip = 4.0, 1.0

    def contribution(mask):
        out = privacy.clipped_noisy_gradient([first, second], tf.constant(mask), clip, 1e-9,
                                             expected_batch)
        return np.concatenate([g.numpy().ravel() for g in out]) * expected_batch

    for row, norm_before in enumerate((5.0, 0.5, 13.0)):
        mask = [0.0, 0.0, 0.0]
        mask[row] = 1.0
        alone = contribution(mask)
        assert np.linalg.norm(alone) == pytest.approx(min(clip, norm_before), rel=1e-5)
    # Masked (padding) rows add nothing; the sum is the clipped rows' sum.
    together = contribution([1.0, 1.0, 0.0])
    np.testing.assert_allclose(together, contribution([1.0, 0.0, 0.0])
                               + contribution([0.0, 1.0, 0.0]), atol=1e-5)


def test_noise_has_the_configured_scale():
    import tensorflow as tf
    zeros = tf.zeros([2, 20000])
    out = privacy.clipped_noisy_gradient([zeros], tf.constant([1.0, 1.0]), 2.0, 0.5, 4.0)
    assert float(np.std(out[0].numpy())) == pytest.approx(2.0 * 0.5 / 4.0, rel=0.03)


def test_poisson_sampler():
    sampler = privacy.PoissonSampler(rows=1000, batch_size=50, max_batch=60, seed=3)
    np.testing.assert_array_equal(sampler.sample(7), sampler.sample(7))
    sizes, hits = [], np.zeros(1000)
    for step in range(2000):
        picked = sampler.sample(step)
        assert len(np.unique(picked)) == len(picked) and picked.max(initial=0) < 1000
        sizes.append(len(picked))
        hits[picked] += 1
    assert max(sizes) == 60  # truncated
    assert np.mean(sizes) == pytest.approx(50, rel=0.02)
    assert hits.mean() / 2000 == pytest.approx(0.05, rel=0.02)  # every row at rate q
    indices, mask = sampler.batch(1)
    np.testing.assert_array_equal(indices, sampler.sample(1))
    assert mask.tolist() == [1.0] * len(indices)
    # An empty sample is one placeholder row that counts for nothing (the noise is added).
    empty = privacy.PoissonSampler(rows=1000, batch_size=1e-9, max_batch=5, seed=0)
    assert [a.tolist() for a in empty.batch(0)] == [[0], [0.0]]
    # The default cut: exceeded over the run with probability <= delta / 10.
    from scipy.stats import binom
    cut = privacy.max_batch_size(config_lib.PrivacyConfig(), 64, 60000, 5622)
    tail = binom.sf(cut, 60000, 64 / 60000) * 5622
    assert tail <= 0.1 / 60000 < binom.sf(cut - 1, 60000, 64 / 60000) * 5622
    assert privacy.max_batch_size(config_lib.PrivacyConfig(max_batch_size=70), 64, 1, 1) == 70


@pytest.mark.parametrize("overrides, message", [
    (["train.privacy.noise_multiplier=0"], "noise_multiplier' must be > 0"),
    (["train.privacy.noise_multiplier=-1"], "noise_multiplier' must be > 0"),
    (["train.privacy.l2_norm_clip=0"], "l2_norm_clip"),
    (["train.privacy.delta=1.5"], "delta"),
    (["train.privacy.enabled=true", "train.loss=softmax", "model.kind=two_tower"],
     "softmax"),
    (["train.privacy.enabled=true", "model.kind=popularity"], "counted"),
    (["train.privacy.enabled=true", "runtime.backend=jax"], "TensorFlow"),
    (["train.privacy.enabled=true", "runtime.strategy=mirrored"], "one device"),
    (["train.privacy.enabled=true", "data.tfrecord_dir=/tmp/x"], "in memory"),
    (["train.privacy.enabled=true", "train.steps_per_execution=4"], "one step per call"),
])
def test_configs_whose_accounting_would_not_hold_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):  # the config's checks, then its kind's
        kinds.for_config(config_lib.load_config(TINY, overrides))


def test_the_per_example_step_needs_onednn_off(monkeypatch):
    import keras
    monkeypatch.setenv(privacy.ONEDNN_VARIABLE, "1")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True), optimizer="sgd")
    with pytest.raises(ConfigError, match="TF_ENABLE_ONEDNN_OPTS=0"):
        privacy.make_private(model, kinds.kind_class("mf")(),
                             config_lib.PrivacyConfig(enabled=True), 8, 16)


def test_a_private_run_trains_and_reports_its_epsilon(tmp_path):
    """Through the CLI (which turns oneDNN off before TensorFlow starts)."""
    model_dir = str(tmp_path / "private")
    overrides = MICRO_OVERRIDES + ["train.privacy.enabled=true",
                                   "train.privacy.noise_multiplier=1.1",
                                   "model.item_ids=true"]
    argv = [sys.executable, "-m", "trainer.task", "train", "--config", TINY,
            "--model_dir", model_dir]
    for override in overrides:
        argv += ["--set", override]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    spent = metrics["privacy"]
    rows = metrics["train"]["steps_per_epoch"] * 8  # micro: batch 8
    assert spent["rows"] >= rows and spent["steps"] == metrics["train"]["steps_per_epoch"]
    assert spent["delta"] == pytest.approx(1 / spent["rows"])
    assert spent["epsilon"] == pytest.approx(privacy.epsilon(
        spent["rows"], 8, spent["max_batch_size"], 1.1, spent["steps"], spent["delta"]))
    assert 0.0 < metrics["test"]["auc"] <= 1.0
    # The vocabulary is the catalogue's: the users' query words ("buy") stay out.
    with open(os.path.join(model_dir, "vocab.txt")) as f:
        assert "buy" not in f.read().split()
    assert os.path.isdir(os.path.join(model_dir, "export"))


def test_private_runs_on_several_replicas_or_distilled_are_refused_before_writing(tmp_path):
    from trainer.training import train_lib
    from trainer.errors import UserInputError

    class TwoReplicas:
        num_replicas_in_sync = 2

    cfg = config_lib.load_config(TINY, MICRO_OVERRIDES + ["train.privacy.enabled=true"])
    model_dir = tmp_path / "run"
    with pytest.raises(UserInputError, match="2 replicas"):
        train_lib.train(cfg, str(model_dir), strategy=TwoReplicas())
    with pytest.raises(UserInputError, match="teacher"):
        train_lib.train(cfg, str(model_dir), train_table_hook=lambda prepared, run_dir: None)
    assert not model_dir.exists()
