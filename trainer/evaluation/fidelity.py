"""How faithfully a student reproduces its teacher: the figures of ``distill_report.json``.

All functions take aligned 1-D arrays of student and teacher logits; the per-impression
ones also take the impression (group) id of each row. Written in numpy (no scipy
dependency); the tests check them against hand-computed values.

* ``pearson`` / ``spearman``: correlation of the logits over all rows (Spearman: of their
  average ranks, so ties share a rank).
* ``kendall_tau``: Kendall's tau-b within each impression of >= 2 rows, averaged over the
  impressions where it is defined (both sides not all tied).
* ``top_k_agreement``: per impression, the share of the teacher's top k that the student
  also ranks in its top k (k capped at the impression's size), averaged; k = 1 is "same
  best item". Ties are broken by row order on both sides.
"""

from __future__ import annotations

import numpy as np


def _check(student, teacher) -> tuple:
    student = np.asarray(student, np.float64).reshape(-1)
    teacher = np.asarray(teacher, np.float64).reshape(-1)
    if student.shape != teacher.shape:
        raise ValueError(f"student has {student.size} logits, teacher {teacher.size}")
    return student, teacher


def pearson(student, teacher) -> float:
    """Pearson correlation (nan when either side is constant)."""
    s, t = _check(student, teacher)
    s, t = s - s.mean(), t - t.mean()
    denominator = np.sqrt((s * s).sum() * (t * t).sum())
    return float((s * t).sum() / denominator) if denominator > 0 else float("nan")


def average_ranks(values) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(student, teacher) -> float:
    s, t = _check(student, teacher)
    return pearson(average_ranks(s), average_ranks(t))


def _tau_b(s: np.ndarray, t: np.ndarray) -> float:
    ds = np.sign(s[:, None] - s[None, :])
    dt = np.sign(t[:, None] - t[None, :])
    upper = np.triu_indices(len(s), k=1)
    ds, dt = ds[upper], dt[upper]
    concordant_minus_discordant = (ds * dt).sum()
    untied_s, untied_t = np.count_nonzero(ds), np.count_nonzero(dt)
    if untied_s == 0 or untied_t == 0:
        return float("nan")
    return float(concordant_minus_discordant / np.sqrt(untied_s * untied_t))


def _groups(groups, size: int) -> list:
    groups = np.asarray(groups).reshape(-1)
    if groups.size != size:
        raise ValueError(f"{groups.size} group ids for {size} logits")
    order = np.argsort(groups, kind="stable")
    boundaries = np.flatnonzero(np.diff(groups[order])) + 1
    return np.split(order, boundaries)


def kendall_tau(student, teacher, groups) -> float:
    """Mean per-impression Kendall tau-b (nan when no impression defines one)."""
    s, t = _check(student, teacher)
    taus = [_tau_b(s[rows], t[rows]) for rows in _groups(groups, s.size) if len(rows) >= 2]
    taus = [tau for tau in taus if not np.isnan(tau)]
    return float(np.mean(taus)) if taus else float("nan")


def top_k_agreement(student, teacher, groups, k: int) -> float:
    """Mean per-impression overlap of the student's and the teacher's top k."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    s, t = _check(student, teacher)
    shares = []
    for rows in _groups(groups, s.size):
        n = min(k, len(rows))
        top_s = set(rows[np.argsort(-s[rows], kind="stable")[:n]])
        top_t = set(rows[np.argsort(-t[rows], kind="stable")[:n]])
        shares.append(len(top_s & top_t) / n)
    return float(np.mean(shares)) if shares else float("nan")


def fidelity_report(student, teacher, groups) -> dict:
    """Every fidelity figure above, as ``distill_report.json`` records it."""
    return {"logit_pearson": pearson(student, teacher),
            "logit_spearman": spearman(student, teacher),
            "kendall_tau": kendall_tau(student, teacher, groups),
            "top1_agreement": top_k_agreement(student, teacher, groups, 1),
            "top10_agreement": top_k_agreement(student, teacher, groups, 10)}
