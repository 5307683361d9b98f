"""One explanation record per case: attributions, counterfactual, sentence, faithfulness.

:class:`Explainer` runs the configured methods on a :class:`Case` and returns the record
written to ``explanations.jsonl`` plus the per-example faithfulness rows that
:func:`summarize_faithfulness` turns into ``faithfulness.json``. Every method is timed and
scored against a seeded random attribution of the same example.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from bert_recommender.explainability import faithfulness, lime_attributions, sentences, token_attributions
from bert_recommender.explainability.counterfactual import find_counterfactual, rank_of_first
from bert_recommender.explainability.history_attributions import (Case, ComposeUserText, leave_one_out,
                                                 sampled_shapley)
from bert_recommender.explainability.pair_scorer import PairScorer

TOKEN_METHODS = ("integrated_gradients", "gradient_x_input", "attention_rollout", "occlusion",
                 "shap", "lime")
HISTORY_METHODS = ("leave_one_out", "shapley")
# Opt-in: shap needs the [explain] extra; shap and lime score hundreds of variants per
# example where occlusion scores one per word (measured on the tests' micro run, 10 words per
# example: occlusion 0.006 s/example, lime with 256 samples 0.034, shap 0.058; the gap grows
# with the model's forward pass).
OPT_IN_METHODS = ("shap", "lime")
DEFAULT_METHODS = tuple(m for m in TOKEN_METHODS + HISTORY_METHODS if m not in OPT_IN_METHODS)
#: how faithfulness.json names each ``PairScorer.target``
EXPLAINED_QUANTITY = {"probability": "click probability",
                      "logit": "logit (the ranking score of a softmax-trained model)"}
TRUTH_K_TOKENS = 5
TRUTH_K_HISTORY = 1
# |f(x) - f(baseline)| under this (a tenth of a percentage point of click probability) is a
# "near-zero difference": there, a 1 % relative completeness error is an absolute error
# under 1e-5, where float32 round-off in the scores and in gradients summed over many
# pieces, not the quadrature, may dominate, so the relative error can stay large at any
# number of steps. Such examples are counted in the summary (with the absolute errors
# beside), not hidden.
NEAR_ZERO_DIFFERENCE = 1e-3


@dataclasses.dataclass
class ExplainOptions:
    """What to compute. ``methods`` name token and history methods (``TOKEN_METHODS``,
    ``HISTORY_METHODS``); ``shap`` needs the ``[explain]`` extra. ``lime_samples`` is the
    size of LIME's neighbourhood per example (the input included).

    Integrated gradients start at ``ig_steps`` quadrature steps and double them, per
    example, while the completeness error is above ``ig_tolerance``, up to
    ``ig_max_steps`` (:func:`token_attributions.integrated_gradients`); examples that do
    not converge are reported as such. ``ig_max_steps = ig_steps`` keeps the steps fixed
    (convergence is still reported); ``ig_tolerance=None`` keeps them fixed and reports no
    convergence."""

    methods: tuple = DEFAULT_METHODS
    ig_steps: int = 32
    ig_tolerance: float | None = token_attributions.DEFAULT_TOLERANCE
    ig_max_steps: int = token_attributions.DEFAULT_MAX_STEPS
    ig_baseline: str = "pad"
    shapley_permutations: int = 32
    shap_max_evals: int = 256
    lime_samples: int = 256
    top_k: int = 1
    counterfactual_threshold: float | None = None
    max_removed: int = 3
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.methods) - set(TOKEN_METHODS + HISTORY_METHODS))
        if unknown:
            raise ValueError(f"unknown explanation method(s) {unknown}; choose from "
                             f"{list(TOKEN_METHODS + HISTORY_METHODS)}")
        if "lime" in self.methods and (isinstance(self.lime_samples, bool) or not isinstance(
                self.lime_samples, (int, np.integer)) or self.lime_samples < 2):
            raise ValueError(f"lime_samples must be an integer >= 2, got {self.lime_samples!r}")
        if self.ig_steps < 1:
            raise ValueError(f"ig_steps must be >= 1, got {self.ig_steps}")
        if self.ig_tolerance is not None:
            if not self.ig_tolerance > 0:
                raise ValueError(f"ig_tolerance must be > 0 (or None), got {self.ig_tolerance!r}")
            if self.ig_max_steps < self.ig_steps:
                raise ValueError(f"ig_max_steps ({self.ig_max_steps}) must be at least "
                                 f"ig_steps ({self.ig_steps})")


def _rounded(values) -> list:
    return [round(float(v), 6) for v in values]


def _truth_list(value) -> list:
    if value is None:
        return []
    return value.split() if isinstance(value, str) else [str(v) for v in value]


class Explainer:
    """Explains cases with one model (see the module docstring)."""

    def __init__(self, scorer: PairScorer, compose: ComposeUserText,
                 options: ExplainOptions | None = None):
        self.scorer = scorer
        self.compose = compose
        self.options = options or ExplainOptions()
        if "shap" in self.options.methods:
            from bert_recommender.explainability.shap_attributions import require_shap
            require_shap()  # fail here, not after other methods have run

    def explain(self, case: Case, index: int = 0) -> tuple[dict, dict, dict]:
        """Returns ``(record, token_rows, history_rows)``: the JSON record and, per method
        (plus ``random``), the example's faithfulness metrics."""
        opts, scorer = self.options, self.scorer
        seed = opts.seed + index
        scorer.bind(case)
        user_text = case.user_text(self.compose)
        token_ids, segment_ids = (a[0] for a in scorer.pack([user_text],
                                                            [case.candidate_text]))
        words = scorer.words(token_ids, segment_ids, has_query=bool(case.query.strip()))
        items = [case.candidate_text] + [text for _, text in case.others]
        impression = scorer.score_texts([user_text] * len(items), items)
        score, rank = float(impression[0]), rank_of_first(impression)
        truth = case.meta.get("truth") or {}
        truth_tokens = _truth_list(truth.get("reason_tokens"))
        truth_history = _truth_list(truth.get("reason_history"))

        token_scores, seconds, completeness = {}, {}, {}
        not_applicable = {m: reason for m, reason in scorer.not_applicable.items()
                          if m in opts.methods}
        for method in (m for m in TOKEN_METHODS
                       if m in opts.methods and m not in not_applicable):
            started = time.perf_counter()
            if method == "integrated_gradients":
                ig = token_attributions.integrated_gradients(
                    scorer, token_ids, segment_ids, steps=opts.ig_steps,
                    baseline=opts.ig_baseline, tolerance=opts.ig_tolerance,
                    max_steps=opts.ig_max_steps)
                values = token_attributions.to_words(ig["attributions"], words)
                completeness[method] = {
                    "attribution_sum": float(ig["attributions"].sum()),
                    "score_difference": float(ig["score"] - ig["baseline_score"]),
                    "relative_error": float(ig["completeness_error"]),
                    "absolute_error": float(ig["absolute_error"]),
                    "steps": int(ig["steps"])}
                if "converged" in ig:
                    completeness[method].update(converged=bool(ig["converged"]),
                                                tolerance=opts.ig_tolerance)
            elif method == "gradient_x_input":
                values = token_attributions.to_words(token_attributions.gradient_x_input(
                    scorer, token_ids, segment_ids), words)
            elif method == "attention_rollout":
                values = token_attributions.to_words(token_attributions.attention_rollout(
                    scorer, token_ids, segment_ids), words)
            elif method == "occlusion":
                values = token_attributions.occlusion(scorer, token_ids, segment_ids, words,
                                                      score)
            elif method == "lime":
                values, _ = lime_attributions.lime_word_attributions(
                    scorer, token_ids, segment_ids, words, num_samples=opts.lime_samples,
                    seed=seed)
            else:
                from bert_recommender.explainability.shap_attributions import shap_word_attributions
                values, _ = shap_word_attributions(scorer, token_ids, segment_ids, words,
                                                   max_evals=opts.shap_max_evals, seed=seed)
            seconds[method] = time.perf_counter() - started
            token_scores[method] = np.asarray(values, dtype=np.float64)
        token_rows = {}
        for method, values in list(token_scores.items()) + [
                ("random", token_attributions.random_attributions(len(words), seed))]:
            row = faithfulness.token_faithfulness(scorer, token_ids, segment_ids, words,
                                                  values, score)
            row.pop("per_bin", None)
            ranked = [words[i].text for i in faithfulness.order_by(values)]
            row.update(faithfulness.truth_at_k(ranked, truth_tokens, TRUTH_K_TOKENS))
            if method in seconds:
                row["seconds_per_example"] = seconds[method]
            if method in completeness:
                c = completeness[method]
                row.update(completeness_error=c["relative_error"],
                           completeness_absolute_error=c["absolute_error"],
                           score_difference_abs=abs(c["score_difference"]),
                           ig_steps=c["steps"])
                if "converged" in c:
                    row["ig_converged"] = float(c["converged"])
            token_rows[method] = row

        history_scores, history_rows, permutations = {}, {}, 0
        for method in (m for m in HISTORY_METHODS if m in opts.methods):
            started = time.perf_counter()
            if method == "leave_one_out":
                values = leave_one_out(scorer, case, self.compose)
            else:
                values, permutations = sampled_shapley(
                    scorer, case, self.compose, opts.shapley_permutations, seed)
            seconds[method] = time.perf_counter() - started
            history_scores[method] = values
        if case.history and history_scores:
            history_ids = [item_id for item_id, _ in case.history]
            for method, values in list(history_scores.items()) + [
                    ("random", token_attributions.random_attributions(len(case.history),
                                                                      seed + 1))]:
                row = faithfulness.history_faithfulness(scorer, case, self.compose, values,
                                                        score)
                ranked = [history_ids[i] for i in faithfulness.order_by(values)]
                row.update(faithfulness.truth_at_k(ranked, truth_history, TRUTH_K_HISTORY))
                if method in seconds:
                    row["seconds_per_example"] = seconds[method]
                history_rows[method] = row

        counterfactual = None
        guide = history_scores.get("shapley", history_scores.get("leave_one_out"))
        if guide is not None and case.history:
            counterfactual = find_counterfactual(
                scorer, case, self.compose, guide, top_k=opts.top_k,
                threshold=opts.counterfactual_threshold, max_removed=opts.max_removed)

        # The record lists history newest first, as the user side shows it (Word.part).
        newest_first = list(reversed(case.history))
        history_attributions = {m: _rounded(v[::-1]) for m, v in history_scores.items()}
        word_dicts = [w.as_dict() for w in words]
        sentence_method = next((m for m in TOKEN_METHODS if m in token_scores), None)
        history_method = "shapley" if "shapley" in history_scores else "leave_one_out"
        record = {
            "example": dict(case.meta.get("example", {}), candidate_id=case.candidate_id),
            "score": round(score, 6),
            "rank": rank,
            "impression_size": len(items),
            "words": word_dicts,
            "token_attributions": {m: _rounded(v) for m, v in token_scores.items()},
            "completeness": completeness,
            "history": [{"item_id": i, "title": t} for i, t in newest_first],
            "history_attributions": history_attributions,
            "shapley_permutations": permutations,
            "counterfactual": counterfactual,
            "sentence": sentences.explain_sentence(
                case.candidate_title, score, rank, len(items),
                counterfactual, [t for _, t in newest_first],
                history_attributions.get(history_method), word_dicts,
                token_scores.get(sentence_method), method=history_method.replace("_", "-")),
            "seconds": {m: round(s, 4) for m, s in seconds.items()},
        }
        if not_applicable:
            record["not_applicable"] = not_applicable
        if truth:
            record["truth"] = {"reason_tokens": truth_tokens, "reason_history": truth_history}
        return record, token_rows, history_rows


def summarize_faithfulness(token_rows: list[dict], history_rows: list[dict],
                           seed: int = 0, target: str = "probability") -> dict:
    """faithfulness.json: per method the mean and bootstrap 95 % interval of each metric,
    and whether it beats the random attribution with non-overlapping intervals.
    ``target``: the scorer's explained quantity (``PairScorer.target``)."""
    explained_quantity = EXPLAINED_QUANTITY[target]

    def by_method(rows):
        methods = {}
        for row in rows:
            for method, metrics in row.items():
                methods.setdefault(method, []).append(metrics)
        summary = {m: faithfulness.summarize(v, seed=seed) for m, v in methods.items()}
        for method, values in summary.items():
            if method != "random" and "random" in summary:
                values["beats_random"] = {
                    metric: faithfulness.beats(values, summary["random"], metric)
                    for metric in faithfulness.HIGHER_IS_BETTER
                    if metric + "_ci" in values}
        if "integrated_gradients" in methods:
            summary["integrated_gradients"].update(
                _completeness_summary(methods["integrated_gradients"]))
        return summary

    return {"num_examples": len(token_rows), "bins": list(faithfulness.BINS),
            "explained_quantity": explained_quantity,
            "methods": by_method(token_rows), "history_methods": by_method(history_rows)}


def _completeness_summary(rows: list[dict]) -> dict:
    """Integrated gradients' completeness over the examples: the worst relative and
    absolute errors, the steps used, how many examples did not converge to the tolerance,
    and how many have a near-zero |f(x) - f(baseline)| (:data:`NEAR_ZERO_DIFFERENCE`),
    where the relative error says little (the worst relative error of the others is given
    apart)."""

    def values(key):
        return np.asarray([r.get(key, np.nan) for r in rows], dtype=np.float64)

    errors, differences = values("completeness_error"), values("score_difference_abs")
    out = {"completeness_error_max": float(np.nanmax(errors))}
    if np.isfinite(values("completeness_absolute_error")).any():
        out["completeness_absolute_error_max"] = float(
            np.nanmax(values("completeness_absolute_error")))
    if np.isfinite(values("ig_steps")).any():
        out["ig_steps_max"] = int(np.nanmax(values("ig_steps")))
    converged = values("ig_converged")
    if np.isfinite(converged).any():
        out["ig_not_converged"] = int(np.sum(converged[np.isfinite(converged)] < 0.5))
    if np.isfinite(differences).any():
        near_zero = differences < NEAR_ZERO_DIFFERENCE
        out["near_zero_difference"] = int(near_zero.sum())
        out["near_zero_difference_threshold"] = NEAR_ZERO_DIFFERENCE
        if near_zero.any() and not near_zero.all():
            out["completeness_error_max_without_near_zero"] = float(
                np.nanmax(errors[~near_zero]))
    return out


def completeness_line(summary: dict) -> str | None:
    """One line on integrated gradients' completeness for the printed summary, or None
    when the summary has no integrated gradients."""
    ig = (summary.get("methods") or {}).get("integrated_gradients")
    if not ig or "completeness_error" not in ig:
        return None

    def percent(value):
        return f"{100 * value:.3g}%"

    lo, hi = ig.get("completeness_error_ci", [float("nan")] * 2)
    parts = [f"integrated gradients completeness error: mean "
             f"{percent(ig['completeness_error'])} [{percent(lo)}, {percent(hi)}], max "
             f"{percent(ig['completeness_error_max'])}"]
    if "completeness_error_max_without_near_zero" in ig:
        parts[0] += (f" ({percent(ig['completeness_error_max_without_near_zero'])} without "
                     f"the near-zero differences)")
    if "ig_steps" in ig:
        parts.append(f"steps mean {ig['ig_steps']:.0f}, max {ig.get('ig_steps_max', '?')}")
    if "ig_not_converged" in ig:
        tolerance = summary.get("ig_tolerance")
        under = f" under {tolerance:.0%}" if isinstance(tolerance, (int, float)) else ""
        parts.append(f"{ig['ig_not_converged']} of {ig.get('examples', '?')} examples not "
                     f"converged{under}")
    if "near_zero_difference" in ig:
        parts.append(f"{ig['near_zero_difference']} with |f(x) - f(baseline)| < "
                     f"{ig['near_zero_difference_threshold']:g}")
    if "completeness_absolute_error_max" in ig:
        parts.append(f"max absolute error {ig['completeness_absolute_error_max']:.1e}")
    return "; ".join(parts)


TABLE_COLUMNS = ("comprehensiveness", "sufficiency", "aopc", "deletion_auc", "insertion_auc",
                 f"truth_precision@{TRUTH_K_TOKENS}", "completeness_error", "ig_steps",
                 "seconds_per_example")
HISTORY_TABLE_COLUMNS = ("comprehensiveness", "deletion_auc", "insertion_auc",
                         f"truth_precision@{TRUTH_K_HISTORY}", "seconds_per_example")


def _cell(values: dict, key: str) -> str:
    value = values.get(key)
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if key == "ig_steps":
        return f"{value:.1f}"
    if key + "_ci" in values and key not in ("seconds_per_example", "completeness_error"):
        lo, hi = values[key + "_ci"]
        return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
    return f"{value:.2e}" if key == "completeness_error" else f"{value:.4f}"


def format_faithfulness_table(summary: dict, markdown: bool = False) -> str:
    """The methods side by side (mean [95% interval]); text, or markdown for TensorBoard."""
    blocks = []
    for title, key, columns in (("token attributions", "methods", TABLE_COLUMNS),
                                ("history-item attributions", "history_methods",
                                 HISTORY_TABLE_COLUMNS)):
        methods = summary.get(key) or {}
        if not methods:
            continue
        shown = [c for c in columns if any(c in v for v in methods.values())]
        rows = [[m] + [_cell(methods[m], c) for c in shown] for m in methods]
        header = ["method"] + shown
        if markdown:
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
            lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths))]
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        if key == "methods" and completeness_line(summary):
            lines.append(("\n" if markdown else "") + completeness_line(summary))
        blocks.append(f"{title} ({summary.get('num_examples', '?')} examples)\n"
                      + "\n".join(lines))
    return "\n\n".join(blocks)
