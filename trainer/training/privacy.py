"""DP-SGD (``train.privacy``): differentially private training of any gradient-trained
model of the one training library, and the privacy it spends.

Each step (Abadi et al., "Deep learning with differential privacy", CCS 2016):

1. **Poisson sampling**: every training row joins the step's sample independently with
   probability ``q = batch_size / rows`` (:class:`PoissonSampler`; fixed-size shuffled
   batches, what ``train`` does otherwise, are not what the accountants analyse). Steps
   take batches of the size drawn (one traced step with a dynamic batch dimension), cut to
   ``max_batch_size`` rows in the step that would draw more: by default a size the whole
   run exceeds with probability under a tenth of delta, so the accountant, which counts
   the truncation, gives the untruncated epsilon.
2. **Per-example gradients, clipped**: the gradient of each row's own loss (each row's
   forward and backward pass, vectorised over the batch with ``tf.vectorized_map``) is
   scaled to L2 norm at most ``l2_norm_clip`` over all variables together.
3. **Noise**: the clipped sum gets Gaussian noise of standard deviation
   ``noise_multiplier * l2_norm_clip`` and is divided by the *expected* batch size
   (a data-independent constant), then the optimizer (AdamW, as always) applies it.

**Accounting**: ``dp_accounting``'s privacy-loss-distribution accountant composes the
steps run as ``TruncatedSubsampledGaussianDpEvent`` (Poisson sampling with truncation) and
gives epsilon at ``delta`` (default 1 / rows), for add-or-remove-one-row neighbouring
datasets. The unit is a training *row* (one shown candidate): a user with many rows is
protected less than epsilon (group privacy). The guarantee covers the weights the steps
produce; under privacy the WordPiece vocabulary is learned from the catalogue alone
(training queries would leak into it). Validation (early stopping) reads the validation
split, not the training rows. Noise comes from TensorFlow's generator, not a
cryptographically secure one.

``tensorflow-privacy`` 0.9 predates Keras 3 (it builds on ``tf.keras`` 2 optimizers), so the
step is written here; ``dp-accounting`` is the maintained accountant (it is what
tensorflow-privacy itself uses).
"""

from __future__ import annotations

import dataclasses
import math
import os

import keras
import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from trainer.data import input_pipeline
from trainer.errors import ConfigError

# TensorFlow 2.21's oneDNN kernels abort the process ("dnnl::error: could not execute a
# primitive") on the 5-D batched attention matmuls that pfor makes of the per-example step;
# with this variable "0" when TensorFlow starts, its own kernels run them.
# `python -m trainer.task` sets it for a private config.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"

# Refused when the per-example gradients of one step would need more memory than this.
MAX_PER_EXAMPLE_GRADIENT_BYTES = 4 << 30


def sampling_probability(batch_size: float, rows: int) -> float:
    """q: the probability that a step samples a given row (``batch_size`` expected rows)."""
    return min(1.0, batch_size / rows)


def delta_for(privacy: config_lib.PrivacyConfig, rows: int) -> float:
    """``privacy.delta``, or 1 / rows."""
    return privacy.delta or 1.0 / rows


def max_batch_size(privacy: config_lib.PrivacyConfig, batch_size: int, rows: int,
                   steps: int) -> int:
    """Where a step's Poisson sample is cut: ``privacy.max_batch_size``, or the smallest
    size that ``steps`` draws of Binomial(rows, batch_size / rows) exceed with probability
    at most delta / 10 in all (measured on the demo: a 4-sigma cut, 96 rows at batch 64,
    raised epsilon from 2.07 to 4.51 at noise 0.6; this rule's 120 leaves it at 2.07)."""
    if privacy.max_batch_size:
        return privacy.max_batch_size
    from scipy.stats import binom  # installed with dp-accounting

    q = sampling_probability(batch_size, rows)
    tail = 0.1 * delta_for(privacy, rows) / max(steps, 1)
    return int(min(rows, binom.isf(tail, rows, q)))  # the least m with P(X > m) <= tail


@dataclasses.dataclass
class Accounting:
    """What a private run spent: ``epsilon`` at ``delta`` after ``steps`` steps."""

    epsilon: float
    delta: float
    steps: int
    rows: int
    sampling_probability: float
    max_batch_size: int
    noise_multiplier: float
    l2_norm_clip: float
    accountant: str = "dp_accounting PLD, TruncatedSubsampledGaussianDpEvent, add-or-remove-one row"


def epsilon(rows: int, batch_size: int, max_batch: int, noise_multiplier: float, steps: int,
            delta: float) -> float:
    """Epsilon at ``delta`` of ``steps`` DP-SGD steps on ``rows`` rows (Poisson sampling at
    ``batch_size / rows``, truncated at ``max_batch``), from dp-accounting's PLD
    accountant."""
    import dp_accounting  # the accountant, imported on use
    from dp_accounting import pld

    if steps <= 0:
        return 0.0
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.TruncatedSubsampledGaussianDpEvent(
            dataset_size=rows, sampling_probability=sampling_probability(batch_size, rows),
            truncated_batch_size=max_batch, noise_multiplier=noise_multiplier), steps)
    accountant = pld.PLDAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def account(privacy: config_lib.PrivacyConfig, rows: int, batch_size: int, max_batch: int,
            steps: int) -> Accounting:
    """The :class:`Accounting` of a run of ``steps`` steps cut at ``max_batch`` rows."""
    delta = delta_for(privacy, rows)
    return Accounting(
        epsilon=epsilon(rows, batch_size, max_batch, privacy.noise_multiplier, steps, delta),
        delta=delta, steps=steps, rows=rows,
        sampling_probability=sampling_probability(batch_size, rows),
        max_batch_size=max_batch, noise_multiplier=privacy.noise_multiplier,
        l2_norm_clip=privacy.l2_norm_clip)


class PoissonSampler:
    """Step ``t``'s sample: every row in independently with probability ``q``, cut to
    ``max_batch`` rows (a uniformly random subset of the draw) when more are drawn; a pure
    function of ``(seed, t)``, so a resumed run draws the same samples."""

    def __init__(self, rows: int, batch_size: int, max_batch: int, seed: int):
        if rows < 1:
            raise ValueError("no training rows to sample")
        self.rows, self.max_batch, self.seed = rows, max_batch, seed
        self.q = sampling_probability(batch_size, rows)

    def sample(self, step: int) -> np.ndarray:
        """The sampled row indices (sorted; at most ``max_batch``)."""
        rng = np.random.default_rng([self.seed, step])
        # Gaps between sampled rows are geometric: O(sample) work, not O(rows).
        gaps = rng.geometric(self.q, size=int(self.rows * self.q + 10 * math.sqrt(
            self.rows * self.q) + 10))
        picked = np.cumsum(gaps) - 1
        while picked[-1] < self.rows:  # rarely: draw more gaps
            more = np.cumsum(rng.geometric(self.q, size=len(gaps))) + picked[-1]
            picked = np.concatenate([picked, more])
        picked = picked[picked < self.rows]
        if len(picked) > self.max_batch:
            picked = np.sort(rng.choice(picked, size=self.max_batch, replace=False))
        return picked

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, mask)``: the sample with mask 1; an empty sample is row 0 with mask 0
        (the step still adds its noise)."""
        picked = self.sample(step)
        if not len(picked):
            return np.zeros(1, np.int64), np.zeros(1, np.float32)
        return picked.astype(np.int64), np.ones(len(picked), np.float32)


def make_dataset(table: input_pipeline.PairTable, packer, sampler: PoissonSampler,
                 first_step: int = 0) -> tf.data.Dataset:
    """The private training stream: one ``(features, label, mask)`` batch per step from
    ``first_step`` on, each a Poisson sample of ``table`` (``mask`` is Keras' sample
    weight: 0 only for the placeholder row of an empty sample)."""
    if not isinstance(table, input_pipeline.PairTable):
        raise ConfigError("config key 'train.privacy.enabled': Poisson sampling needs the "
                          "training table in memory (not data.tfrecord_dir)")
    columns = {k: tf.constant(v.astype(str) if v.dtype == object else v)
               for k, v in table.columns().items() if k != "true_probability"}

    def steps():
        step = first_step
        while True:
            yield sampler.batch(step)
            step += 1

    def gather(indices, mask):
        features, label = input_pipeline.model_inputs(
            {k: tf.gather(v, indices) for k, v in columns.items()}, packer)
        return features, label, mask

    signature = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32))
    return (tf.data.Dataset.from_generator(steps, output_signature=signature)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def per_example_loss(model: keras.Model, label, logits):
    """``[rows]``: each row's loss under the model's compiled loss (``reduction=None``;
    a trailing axis is added because Keras' losses average over the last one)."""
    loss = model.loss
    config = loss.get_config()
    config["reduction"] = None
    return type(loss).from_config(config)(tf.reshape(label, [-1, 1]),
                                          tf.reshape(logits, [-1, 1]))


def clipped_noisy_gradient(jacobians: list, mask, l2_norm_clip: float,
                           noise_multiplier: float, expected_batch: float) -> list:
    """DP-SGD's gradient from per-example gradients ``jacobians`` (one ``[rows, *shape]``
    tensor per variable): each masked row scaled to L2 norm <= ``l2_norm_clip`` over all
    variables together, summed, Gaussian noise of std ``noise_multiplier * l2_norm_clip``
    added, divided by ``expected_batch``."""
    rows = tf.shape(mask)[0]
    squared = tf.add_n([tf.reduce_sum(tf.square(tf.reshape(j, [rows, -1])), axis=1)
                        for j in jacobians])
    scale = mask * tf.minimum(1.0, l2_norm_clip / (tf.sqrt(squared) + 1e-12))
    gradients = []
    for j in jacobians:
        summed = tf.tensordot(scale, tf.cast(j, tf.float32), axes=1)
        noise = tf.random.normal(tf.shape(summed), stddev=noise_multiplier * l2_norm_clip)
        gradients.append((summed + noise) / expected_batch)
    return gradients


def make_private(model: keras.Model, kind, privacy: config_lib.PrivacyConfig,
                 expected_batch: int, max_batch: int) -> keras.Model:
    """Replaces a compiled ``model``'s training step by the DP-SGD step (the module
    docstring); ``kind`` is its :class:`~trainer.kinds.base.ModelKind`. The model itself
    is unchanged: it saves, exports and serves as usual."""
    if os.environ.get(ONEDNN_VARIABLE) != "0":
        raise ConfigError(
            f"config key 'train.privacy.enabled': TensorFlow's oneDNN kernels abort on the "
            f"per-example step; set {ONEDNN_VARIABLE}=0 before TensorFlow is imported "
            "(python -m trainer.task does so for a private config)")
    if model.losses:
        raise ConfigError("config key 'train.privacy.enabled': this model adds losses "
                          "computed over the batch (model.losses), whose gradient is not "
                          "per example")
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    needed = 4 * params * max_batch
    if needed > MAX_PER_EXAMPLE_GRADIENT_BYTES:
        raise ConfigError(
            f"config key 'train.privacy.enabled': the per-example gradients of one step "
            f"need {needed / 2**30:.1f} GiB ({params:,} weights x "
            f"{max_batch} rows); lower train.batch_size or "
            "train a smaller model")

    def one_example(example):
        x, y = example
        with tf.GradientTape() as tape:
            logits = model(tf.nest.map_structure(lambda t: t[None], x), training=True)
            loss = per_example_loss(model, y[None], logits)[0]
        gradients = tape.gradient(loss, model.trainable_variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return gradients, loss, tf.reshape(logits, [])

    def train_step(data):
        x, y, mask = data
        variables = model.trainable_variables
        # Each row's own forward and backward pass, vectorised by pfor: O(rows) work.
        # (tape.jacobian of the batch's losses runs one batched backward pass per row,
        # O(rows^2): measured 70-100x a plain step on the demo.)
        # One row at a time there are no data-dependent shapes to keep (pfor has no
        # converter for the UniqueV2 a two-tower model finds repeated items with).
        with kind.unpinned_shapes(model):
            jacobians, losses, logits = tf.vectorized_map(one_example, (x, y))
        gradients = clipped_noisy_gradient(jacobians, mask, privacy.l2_norm_clip,
                                           privacy.noise_multiplier, float(expected_batch))
        model.optimizer.apply(gradients, variables)
        # fit's "loss": the sample's mean loss. Keras keeps its tracker private; this is
        # what its own train_step updates.
        model._loss_tracker.update_state(  # pylint: disable=protected-access
            tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0),
            sample_weight=tf.reduce_sum(mask))
        return model.compute_metrics(x, y, logits, sample_weight=mask)

    model.train_step = train_step
    # The optimizer's global_clipnorm would clip the noisy average again: harmless for
    # privacy (post-processing) but it would change what l2_norm_clip means.
    model.optimizer.global_clipnorm = None
    return model
