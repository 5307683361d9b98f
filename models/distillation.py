"""Knowledge distillation objects the training library compiles a student with.

A distillation batch's target packs three columns per row, ``y_true [b, 3]``:

    0  label          the click label (0 for rows without one)
    1  teacher_logit  the teacher's logit on the same (user, item) pair
    2  labelled       1 for a logged impression, 0 for an unlabelled catalogue pair

and the student's loss per row is (Hinton et al. 2015, binary form)::

    labelled * alpha * BCE(label, sigmoid(s))
        + (1 - alpha) * T^2 * BCE(sigmoid(t / T), sigmoid(s / T))

with ``s`` the student's and ``t`` the teacher's logit. The soft term is the binary
cross-entropy against the softened teacher probability (the KL divergence plus the
teacher's entropy, a constant for the student); ``T^2`` keeps its gradient scale
independent of the temperature. A plain ``y_true [b]`` (validation) gets ordinary BCE.
"""

from __future__ import annotations

import keras
from keras import ops

LABEL, TEACHER_LOGIT, LABELLED = 0, 1, 2


def _bce_with_logits(targets, logits):
    """Elementwise binary cross-entropy of ``sigmoid(logits)`` against ``targets``,
    computed stably: max(z, 0) - z * y + log(1 + exp(-|z|))."""
    return (ops.maximum(logits, 0.0) - logits * targets
            + ops.log1p(ops.exp(-ops.abs(logits))))


@keras.saving.register_keras_serializable(package="bert_recommender")
class DistillationLoss(keras.losses.Loss):
    """``alpha * BCE(labels) + (1 - alpha) * T^2 * KD(teacher / T)`` on logits (module
    docstring).

    Args:
      alpha: weight of the label term, in [0, 1] (0: the teacher alone).
      temperature: T > 0; higher softens both distributions.
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 1.0,
                 name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.alpha = float(alpha)
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        logits = ops.reshape(ops.cast(y_pred, "float32"), [-1])
        y_true = ops.cast(y_true, "float32")
        if len(y_true.shape) == 1 or y_true.shape[-1] == 1:
            return _bce_with_logits(ops.reshape(y_true, [-1]), logits)
        y_true = ops.reshape(y_true, [-1, 3])
        hard = y_true[:, LABELLED] * _bce_with_logits(y_true[:, LABEL], logits)
        t = self.temperature
        soft = _bce_with_logits(ops.sigmoid(y_true[:, TEACHER_LOGIT] / t), logits / t)
        return self.alpha * hard + (1.0 - self.alpha) * t * t * soft

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="bert_recommender")
class LabelledAUC(keras.metrics.AUC):
    """ROC AUC of the logits against the labels, over labelled rows only: reads column 0 of
    a distillation target (weighted by its ``labelled`` column), or a plain label vector."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        if len(y_true.shape) == 2 and y_true.shape[-1] == 3:
            sample_weight = y_true[:, LABELLED]
            y_true = y_true[:, LABEL]
        return super().update_state(ops.reshape(y_true, [-1]),
                                    ops.reshape(y_pred, [-1]), sample_weight)
