"""trainer/training/distill_lib.py end to end on the shared micro two-tower teacher: the students
train through the one training library, the teacher's logits are cached, the report holds
every fidelity and cost figure, and bad input is refused before anything is written."""

import json
import os

import numpy as np
import pytest

from trainer import config as config_lib
from trainer.training import distill_lib
from trainer import runs, task
from trainer.errors import ConfigError, RunDirError


def _student_config(teacher_dir, overrides=()):
    """The teacher's resolved config with student model/train/distill keys changed."""
    return config_lib.load_config(os.path.join(teacher_dir, "config.yaml"), list(overrides))


GLASS_BOX = ["model.kind=glass_box", "model.l2=0.0001", "train.learning_rate=0.01",
             "distill.unlabelled_per_example=2"]


@pytest.fixture(scope="module")
def glass_box_student(trained_two_tower_run, tmp_path_factory):
    teacher_dir, _ = trained_two_tower_run
    model_dir = str(tmp_path_factory.mktemp("student") / "glass_box")
    args = ["distill", "--teacher_dir", teacher_dir, "--model_dir", model_dir, "--config",
            os.path.join(teacher_dir, "config.yaml")]
    for override in GLASS_BOX:
        args += ["--set", override]
    assert task.main(args) == 0
    with open(os.path.join(model_dir, "distill_report.json")) as f:
        return teacher_dir, model_dir, json.load(f)


def test_distill_command_writes_a_run_and_a_full_report(glass_box_student):
    teacher_dir, model_dir, report = glass_box_student
    for name in ("model.keras", "export", "metrics.json", "config.yaml",
                 "teacher_logits/train.npy", "teacher_logits/meta.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    assert report["student_kind"] == "glass_box" and report["teacher_kind"] == "two_tower"
    test = report["splits"]["test"]
    for key in ("logit_pearson", "logit_spearman", "kendall_tau", "top1_agreement",
                "top10_agreement"):
        assert np.isfinite(test[key]), key
    # nan when the (micro) teacher has no lift over 0.5 to keep
    assert "auc_lift_kept" in test and "group_auc_lift_kept" in test
    assert -1 <= test["logit_spearman"] <= 1 and 0 <= test["top1_agreement"] <= 1
    assert {"auc", "ndcg@10"} <= set(test["student"]) and {"auc"} <= set(test["teacher"])
    for side in ("teacher_cost", "student_cost"):
        cost = report[side]
        assert cost["parameters"] > 0 and cost["flops_per_example"] > 0
        assert cost["examples_per_second"] > 0
    assert report["student_cost"]["parameters"] < report["teacher_cost"]["parameters"]
    explanations = report["explanations"]
    assert 0 <= explanations["student_truth_precision@5"]["mean"] <= 1
    assert explanations["examples"] > 0


def test_teacher_logits_cover_train_rows_and_unlabelled_pairs(glass_box_student):
    teacher_dir, model_dir, _ = glass_box_student
    from trainer.training import train_lib
    from trainer.evaluation import scoring

    teacher_run = runs.open_run(teacher_dir)
    cfg = teacher_run.cfg
    prepared = train_lib.prepare_data(cfg, model_dir)
    logits = np.load(os.path.join(model_dir, "teacher_logits", "train.npy"))
    assert len(logits) == 3 * len(prepared.tables["train"])  # + 2 unlabelled per row
    # The cached logits of the logged rows are the teacher's own predictions.
    import keras
    teacher = keras.models.load_model(os.path.join(teacher_dir, "model.keras"))
    packer = teacher_run.featurizer
    direct = scoring.predict_logits(teacher, prepared.tables["train"], packer, 64)
    # Each logged row comes first, followed by its 2 drawn pairs (interleaved, so the
    # shuffle buffer mixes them).
    np.testing.assert_allclose(logits[0::3], direct, atol=1e-5)


def test_cached_teacher_logits_are_reused(glass_box_student, monkeypatch):
    teacher_dir, model_dir, _ = glass_box_student
    from trainer.training import train_lib

    cfg = _student_config(teacher_dir, GLASS_BOX)
    targets = distill_lib.TeacherTargets(cfg, distill_lib.load_teacher(teacher_dir))

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its logits are cached")

    monkeypatch.setattr(distill_lib.keras.models, "load_model", no_teacher)
    train = targets(train_lib.prepare_data(cfg, model_dir), model_dir)
    cached = np.load(os.path.join(model_dir, "teacher_logits", "train.npy"))
    np.testing.assert_array_equal(train.teacher_logit, cached)
    assert train.labelled.tolist() == [1.0, 0.0, 0.0] * (len(train) // 3)
    original = train_lib.prepare_data(cfg, model_dir).tables["train"]
    np.testing.assert_array_equal(train.item_index[0::3], original.item_index)
    np.testing.assert_array_equal(train.user_index[1::3], original.user_index)


def test_glass_box_export_explains_with_contributions_that_sum_to_the_logit(
        glass_box_student):
    _, model_dir, _ = glass_box_student
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(model_dir, "export"))
    inputs = {"query": tf.constant(["a query", ""]),
              "history_ids": tf.constant([["i0001", "i0002"], ["", ""]]),
              "item_id": tf.constant(["i0003", "i0004"])}
    served = loaded.signatures["serving_default"](**inputs)
    parts = loaded.signatures["explain"](**inputs)
    total = (parts["bias"].numpy() + parts["word_contributions"].numpy().sum(-1)
             + parts["item_contributions"].numpy().sum(-1))
    np.testing.assert_allclose(total, served["logit"].numpy(), rtol=1e-5, atol=1e-6)
    words = parts["words"].numpy()
    assert (parts["word_contributions"].numpy()[words == b""] == 0).all()


def test_a_two_tower_student_distils(trained_two_tower_run, tmp_path):
    teacher_dir, _ = trained_two_tower_run
    # A bag-of-word-pieces item tower (no transformer layer) of the teacher's width.
    cfg = _student_config(teacher_dir, ["model.num_layers=0", "distill.alpha=0.2"])
    report = distill_lib.distill(cfg, teacher_dir, str(tmp_path / "student"),
                                 explain_examples=2)
    assert report["student_kind"] == "two_tower"
    assert report["student_cost"]["flops_per_example"] < \
        report["teacher_cost"]["flops_per_example"]
    assert "explanations" not in report
    assert os.path.exists(os.path.join(tmp_path, "student", "item_index", "vectors.npy"))


def test_bad_input_is_refused_before_anything_is_written(trained_two_tower_run, tmp_path):
    teacher_dir, _ = trained_two_tower_run
    model_dir = str(tmp_path / "student")
    cfg = _student_config(teacher_dir, GLASS_BOX)
    with pytest.raises(RunDirError, match="teacher_dir"):
        distill_lib.distill(cfg, str(tmp_path / "not_a_run"), model_dir)
    with pytest.raises(ConfigError, match="data.vocab_size"):
        distill_lib.distill(_student_config(teacher_dir, GLASS_BOX + ["data.vocab_size=90"]),
                            teacher_dir, model_dir)
    with pytest.raises(ConfigError, match="train.loss"):
        distill_lib.distill(_student_config(teacher_dir, ["train.loss=softmax"]),
                            teacher_dir, model_dir)
    with pytest.raises(RunDirError, match="teacher"):
        distill_lib.distill(cfg, teacher_dir, teacher_dir)
    assert not os.path.exists(model_dir)
    assert task.main(["distill", "--teacher_dir", str(tmp_path / "nope"), "--config",
                      os.path.join(teacher_dir, "config.yaml"), "--model_dir",
                      model_dir]) == 2


def test_per_user_centering_removes_each_user_states_mean_only(glass_box_student):
    """distill.teacher_centering=per_user: within one user state (an impression's logged
    rows and their drawn pairs) the targets keep the teacher's differences; their mean is
    0. The cached raw logits are reused."""
    teacher_dir, model_dir, _ = glass_box_student
    from trainer.training import train_lib

    cfg = _student_config(teacher_dir, GLASS_BOX)
    cfg.distill.teacher_centering = "per_user"
    targets = distill_lib.TeacherTargets(cfg, distill_lib.load_teacher(teacher_dir))
    train = targets(train_lib.prepare_data(cfg, model_dir), model_dir)
    raw = np.load(os.path.join(model_dir, "teacher_logits", "train.npy"))
    states = targets.user_state
    assert len(states) == len(train)
    for state in np.unique(states)[:20]:
        rows = states == state
        assert rows.sum() == 3 * (train.labelled[rows] == 1).sum()  # 2 drawn per logged row
        assert abs(train.teacher_logit[rows].mean()) < 1e-5
        np.testing.assert_allclose(train.teacher_logit[rows] - train.teacher_logit[rows][0],
                                   raw[rows] - raw[rows][0], atol=1e-5)
