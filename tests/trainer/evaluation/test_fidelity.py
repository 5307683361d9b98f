"""trainer/evaluation/fidelity.py: each teacher-student figure, exact on hand-made inputs."""

import numpy as np
import pytest

from trainer.evaluation import fidelity


def test_pearson_and_spearman_by_hand():
    student = [1.0, 2.0, 3.0, 4.0]
    teacher = [2.0, 4.0, 6.0, 9.0]
    # Pearson: centred s = [-1.5,-.5,.5,1.5], t = [-3.25,-1.25,.75,3.75];
    # sum st = 4.875 + .625 + .375 + 5.625 = 11.5, sum s^2 = 5, sum t^2 = 26.75
    assert fidelity.pearson(student, teacher) == pytest.approx(11.5 / np.sqrt(5 * 26.75))
    assert fidelity.spearman(student, teacher) == pytest.approx(1.0)
    assert fidelity.spearman(student, teacher[::-1]) == pytest.approx(-1.0)
    assert np.isnan(fidelity.pearson([1, 1, 1], [1, 2, 3]))


def test_average_ranks_share_ties():
    np.testing.assert_allclose(fidelity.average_ranks([10, 20, 10, 30]), [1.5, 3, 1.5, 4])


def test_kendall_tau_per_impression_by_hand():
    # Impression 0: s = [1,2,3], t = [1,3,2]: pairs (01 +, 02 +, 12 -) -> (2-1)/3.
    # Impression 1: s = [5,4], t = [1,2]: discordant -> -1. Impression 2: one row, skipped.
    student = [1, 2, 3, 5, 4, 7]
    teacher = [1, 3, 2, 1, 2, 0]
    groups = [0, 0, 0, 1, 1, 2]
    assert fidelity.kendall_tau(student, teacher, groups) == pytest.approx((1 / 3 - 1) / 2)


def test_kendall_tau_b_with_ties():
    # s = [1,1,2], t = [1,2,3]: pairs 01 (s tied), 02 +, 12 +: (2 - 0) / sqrt(2 * 3)
    assert fidelity.kendall_tau([1, 1, 2], [1, 2, 3], [0, 0, 0]) == pytest.approx(
        2 / np.sqrt(6))


def test_top_k_agreement_by_hand():
    student = [0.9, 0.1, 0.5, 0.3, 0.2, 0.8]
    teacher = [0.1, 0.9, 0.5, 0.3, 0.8, 0.2]
    groups = [0, 0, 0, 1, 1, 1]
    # top-1: impression 0 student row 0, teacher row 1 -> 0; impression 1: 5 vs 4 -> 0
    assert fidelity.top_k_agreement(student, teacher, groups, 1) == 0.0
    # top-2: imp 0 {0,2} vs {1,2} -> 1/2; imp 1 {5,3} vs {4,3} -> 1/2
    assert fidelity.top_k_agreement(student, teacher, groups, 2) == pytest.approx(0.5)
    # k beyond the impression size: every row of both -> 1
    assert fidelity.top_k_agreement(student, teacher, groups, 10) == 1.0
    assert fidelity.top_k_agreement(teacher, teacher, groups, 1) == 1.0
    with pytest.raises(ValueError):
        fidelity.top_k_agreement(student, teacher, groups, 0)


def test_agrees_with_scipy_where_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=40), rng.normal(size=40)
    t[:5] = t[5]  # ties
    assert fidelity.pearson(s, t) == pytest.approx(stats.pearsonr(s, t)[0])
    assert fidelity.spearman(s, t) == pytest.approx(stats.spearmanr(s, t)[0])
    assert fidelity.kendall_tau(s, t, np.zeros(40)) == pytest.approx(stats.kendalltau(s, t)[0])


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        fidelity.pearson([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        fidelity.kendall_tau([1, 2], [1, 2], [0])
