"""models/distillation.py: the KD loss and the labelled-rows AUC, exact on hand-made rows."""

import math

import keras
import numpy as np
import pytest

from bert_recommender.models.distillation import DistillationLoss, LabelledAUC


def _bce(target, logit):
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(p) + (1.0 - target) * math.log(1.0 - p))


def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_distillation_loss_equals_the_formula_row_by_row():
    alpha, t = 0.3, 2.0
    # rows: (label, teacher logit, labelled), student logit
    rows = [((1.0, 2.0, 1.0), 0.5), ((0.0, -1.0, 1.0), 1.5), ((0.0, 3.0, 0.0), -0.7)]
    y_true = np.array([r[0] for r in rows], np.float32)
    y_pred = np.array([r[1] for r in rows], np.float32)
    expected = []
    for (label, teacher, labelled), student in rows:
        hard = labelled * _bce(label, student)
        soft = _bce(_sigmoid(teacher / t), student / t)
        expected.append(alpha * hard + (1 - alpha) * t * t * soft)
    loss = DistillationLoss(alpha=alpha, temperature=t)
    np.testing.assert_allclose(np.asarray(loss.call(y_true, y_pred)), expected, rtol=1e-5)
    assert float(loss(y_true, y_pred)) == pytest.approx(np.mean(expected), rel=1e-5)
    # Unlabelled rows learn the teacher only: their (placeholder) label has no effect.
    flipped = y_true.copy()
    flipped[2, 0] = 1.0
    assert float(loss(flipped, y_pred)) == pytest.approx(float(loss(y_true, y_pred)))


def test_alpha_one_is_plain_bce_and_a_label_vector_gets_bce():
    y_pred = np.array([0.5, -2.0], np.float32)
    labels = np.array([1.0, 0.0], np.float32)
    packed = np.stack([labels, np.array([9.0, -9.0]), np.ones(2)], axis=1).astype(np.float32)
    expected = np.mean([_bce(1.0, 0.5), _bce(0.0, -2.0)])
    assert float(DistillationLoss(alpha=1.0)(packed, y_pred)) == pytest.approx(expected,
                                                                                 rel=1e-5)
    assert float(DistillationLoss(alpha=0.2)(labels, y_pred)) == pytest.approx(expected,
                                                                                 rel=1e-5)


def test_soft_term_is_smallest_at_the_teacher_logit():
    loss = DistillationLoss(alpha=0.0, temperature=3.0)
    y_true = np.array([[0.0, 1.2, 0.0]], np.float32)
    values = [float(loss(y_true, np.array([z], np.float32))) for z in (0.0, 1.2, 2.4)]
    assert values[1] < values[0] and values[1] < values[2]


@pytest.mark.parametrize("kwargs", [{"alpha": -0.1}, {"alpha": 1.5}, {"temperature": 0.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        DistillationLoss(**kwargs)


def test_loss_round_trips_through_keras_serialization():
    loss = DistillationLoss(alpha=0.25, temperature=4.0)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (again.alpha, again.temperature) == (0.25, 4.0)


def test_labelled_auc_ignores_unlabelled_rows():
    # Labelled rows rank perfectly; the unlabelled row (label 0, high score) would break
    # the ranking if it counted.
    y_true = np.array([[1, 0, 1], [0, 0, 1], [0, 0, 0]], np.float32)
    y_pred = np.array([2.0, -1.0, 5.0], np.float32)
    metric = LabelledAUC(from_logits=True)
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(1.0)
    plain = LabelledAUC(from_logits=True)
    plain.update_state(np.array([1, 0, 0], np.float32), y_pred)
    assert float(plain.result()) == pytest.approx(0.5)
