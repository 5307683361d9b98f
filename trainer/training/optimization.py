"""The training step's optimizer, loss and metric: what every model is compiled with.

Imports neither TensorFlow nor the input pipeline, so the same compile runs wherever the
models do: under tf.distribute (trainer/training/train_lib.py), under JAX, and on a GPU machine that
has JAX but no TensorFlow (benchmarks/device_check.py).
"""

from __future__ import annotations

import keras

from bert_recommender.models.distillation import DistillationLoss, LabelledAUC
from trainer import config as config_lib


@keras.saving.register_keras_serializable(package="bert_recommender")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then linear decay to 0."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = keras.ops.cast(max(self.warmup_steps, 1), "float32")
        total = keras.ops.cast(max(self.total_steps, self.warmup_steps + 1), "float32")
        up = self.peak * step / warmup
        down = self.peak * keras.ops.maximum(0.0, (total - step) / (total - warmup))
        return keras.ops.where(step < warmup, up, down)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps}


def make_optimizer(train_cfg: config_lib.TrainConfig, total_steps: int):
    """AdamW with warmup + linear decay, global-norm clipping, and no weight decay on
    LayerNorm parameters and biases (the BERT recipe)."""
    schedule = WarmupLinearDecay(train_cfg.learning_rate,
                                 int(train_cfg.warmup_fraction * total_steps), total_steps)
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule, weight_decay=train_cfg.weight_decay,
        global_clipnorm=train_cfg.clipnorm or None)
    # Keras matches these names against a variable's short name; biases kept in Embedding
    # tables (MF's user/item biases, the two-tower item bias) are named "embeddings" and
    # so are decayed. Measured on benchmarks.quality (ml-latest-small): excluding them too
    # lowered tuned MF from nDCG@10 0.394 to 0.388 (the decay regularises the biases), so
    # they stay decayed until MF regularises its biases explicitly and is re-tuned.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "global_bias"])
    return optimizer


def compile_for_training(model: keras.Model, cfg: config_lib.ExperimentConfig,
                         total_steps: int, distillation: bool = False) -> keras.Model:
    """Compiles a built ``model`` (call inside the strategy's scope): AdamW with warmup and
    decay (:func:`make_optimizer`), BCE on the logit (or, with ``distillation``,
    ``DistillationLoss(distill.alpha, distill.temperature)`` with AUC on the labelled
    rows), AUC, ``train.jit_compile`` (always on under JAX) and
    ``train.steps_per_execution``."""
    if distillation:
        loss = DistillationLoss(cfg.distill.alpha, cfg.distill.temperature)
        auc = LabelledAUC(from_logits=True, name="auc")
    else:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        auc = keras.metrics.AUC(from_logits=True, name="auc")
    model.compile(
        optimizer=make_optimizer(cfg.train, total_steps),
        loss=loss,
        metrics=[auc],
        # JAX compiles every step (uncompiled JAX is a debugging mode, far slower);
        # train.jit_compile chooses XLA under TensorFlow.
        jit_compile=cfg.train.jit_compile or keras.backend.backend() == "jax",
        steps_per_execution=cfg.train.steps_per_execution)
    return model
