"""The Explainer's record on a tiny model, and the faithfulness summary and table."""

import numpy as np
import pytest

from bert_recommender.explainability import explainer as explainer_lib
from bert_recommender.explainability.history_attributions import Case

COMPOSE = lambda query, titles: " ; ".join(([query] if query else []) + titles[::-1])  # noqa


def _case():
    return Case(query="looking for a laptop",
                history=[("h1", "globex vintage camera"), ("h2", "acme wireless laptops new")],
                candidate_id="c1", candidate_text="initech wireless laptop pro",
                candidate_title="initech wireless laptop pro",
                others=[("c2", "acme phone classic"), ("c3", "globex camera")],
                meta={"example": {"index": 3}, "truth": {"reason_tokens": "wireless laptop",
                                                         "reason_history": ["h2"]}})


def test_record_is_complete_and_aligned(tiny_scorer):
    options = explainer_lib.ExplainOptions(shapley_permutations=8)
    record, token_rows, history_rows = explainer_lib.Explainer(
        tiny_scorer, COMPOSE, options).explain(_case(), index=3)
    words = record["words"]
    assert [w["text"] for w in words if w["segment"] == "item"] == \
        "initech wireless laptop pro".split()
    assert set(record["token_attributions"]) == (set(explainer_lib.TOKEN_METHODS)
                                                 - set(explainer_lib.OPT_IN_METHODS))
    assert all(len(v) == len(words) for v in record["token_attributions"].values())
    # History is listed newest first, matching Word.part on the user side.
    assert [h["item_id"] for h in record["history"]] == ["h2", "h1"]
    assert words[4]["text"] == "acme" and words[4]["part"] == 0
    assert record["shapley_permutations"] == 8
    assert record["impression_size"] == 3 and 1 <= record["rank"] <= 3
    assert record["truth"] == {"reason_tokens": ["wireless", "laptop"],
                               "reason_history": ["h2"]}
    assert record["completeness"]["integrated_gradients"]["relative_error"] < 0.01
    assert set(token_rows) == set(record["token_attributions"]) | {"random"}
    assert set(history_rows) == {"leave_one_out", "shapley", "random"}
    assert "truth_precision@5" in token_rows["occlusion"]
    assert record["sentence"].startswith("Recommended 'initech wireless laptop pro'")


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown explanation method"):
        explainer_lib.ExplainOptions(methods=("integrated_gradients", "anchors"))
    with pytest.raises(ValueError, match="lime_samples must be an integer >= 2"):
        explainer_lib.ExplainOptions(methods=("lime",), lime_samples=1)


def test_lime_is_scored_like_the_other_token_methods(tiny_scorer):
    options = explainer_lib.ExplainOptions(methods=("occlusion", "lime"), lime_samples=32)
    explainer = explainer_lib.Explainer(tiny_scorer, COMPOSE, options)
    record, token_rows, history_rows = explainer.explain(_case(), index=3)
    assert set(record["token_attributions"]) == {"occlusion", "lime"}
    assert len(record["token_attributions"]["lime"]) == len(record["words"])
    assert set(token_rows) == {"occlusion", "lime", "random"} and history_rows == {}
    assert set(token_rows["lime"]) >= {"comprehensiveness", "sufficiency", "aopc",
                                       "deletion_auc", "insertion_auc", "truth_precision@5",
                                       "seconds_per_example"}
    assert record["seconds"]["lime"] > 0
    again, _, _ = explainer.explain(_case(), index=3)  # seeded by options.seed + index
    assert again["token_attributions"]["lime"] == record["token_attributions"]["lime"]


def test_summary_compares_with_random_and_formats():
    rng = np.random.default_rng(0)
    good = [{"comprehensiveness": 0.5 + 0.01 * rng.standard_normal(),
             "deletion_auc": 0.1, "completeness_error": 1e-4 * (i + 1)} for i in range(20)]
    rows = [{"integrated_gradients": g, "random": {"comprehensiveness": 0.1,
                                                   "deletion_auc": 0.1}} for g in good]
    summary = explainer_lib.summarize_faithfulness(rows, [])
    ig = summary["methods"]["integrated_gradients"]
    assert ig["beats_random"] == {"comprehensiveness": True, "deletion_auc": False}
    assert ig["completeness_error_max"] == pytest.approx(2e-3)
    table = explainer_lib.format_faithfulness_table(summary)
    assert "integrated_gradients" in table and "[" in table.splitlines()[2]
    markdown = explainer_lib.format_faithfulness_table(summary, markdown=True)
    assert "| method | comprehensiveness |" in markdown


def test_explainer_doubles_steps_by_default_and_reports_convergence(sharp_scorer):
    # Default options: start at ig_steps, double up to ig_max_steps while above 1 %.
    adaptive = explainer_lib.Explainer(sharp_scorer, COMPOSE, explainer_lib.ExplainOptions(
        methods=("integrated_gradients",), ig_steps=2))
    record, rows, _ = adaptive.explain(_case(), index=3)
    c = record["completeness"]["integrated_gradients"]
    assert c["converged"] and c["steps"] > 2 and c["relative_error"] < 0.01
    assert c["absolute_error"] == pytest.approx(abs(c["attribution_sum"]
                                                    - c["score_difference"]))
    assert rows["integrated_gradients"]["ig_steps"] == c["steps"]
    # Capped below what the example needs: reported as not converged.
    capped = explainer_lib.Explainer(sharp_scorer, COMPOSE, explainer_lib.ExplainOptions(
        methods=("integrated_gradients",), ig_steps=2, ig_max_steps=4))
    record, capped_rows, _ = capped.explain(_case(), index=3)
    c = record["completeness"]["integrated_gradients"]
    assert not c["converged"] and c["steps"] == 4 and c["relative_error"] > 0.01
    summary = explainer_lib.summarize_faithfulness([rows, capped_rows], [])
    summary["ig_tolerance"] = 0.01
    ig = summary["methods"]["integrated_gradients"]
    assert ig["ig_not_converged"] == 1 and ig["ig_steps_max"] == max(4, rows[
        "integrated_gradients"]["ig_steps"])
    assert ig["near_zero_difference"] == 0
    assert "1 of 2 examples not converged under 1%" in \
        explainer_lib.format_faithfulness_table(summary)
    # ig_tolerance=None: the fixed steps of before, with no convergence claimed.
    fixed = explainer_lib.Explainer(sharp_scorer, COMPOSE, explainer_lib.ExplainOptions(
        methods=("integrated_gradients",), ig_steps=2, ig_tolerance=None))
    c = fixed.explain(_case(), index=3)[0]["completeness"]["integrated_gradients"]
    assert c["steps"] == 2 and "converged" not in c
    with pytest.raises(ValueError, match="ig_max_steps"):
        explainer_lib.ExplainOptions(ig_steps=64, ig_max_steps=32)


def test_summary_counts_near_zero_differences():
    rows = [{"integrated_gradients": {"completeness_error": error, "ig_steps": steps,
                                      "ig_converged": float(error <= 0.01),
                                      "completeness_absolute_error": error * difference,
                                      "score_difference_abs": difference}}
            for error, steps, difference in ((0.002, 32, 0.2), (0.004, 64, 0.1),
                                             (0.3, 512, 1e-5))]
    ig = explainer_lib.summarize_faithfulness(rows, [])["methods"]["integrated_gradients"]
    assert ig["completeness_error_max"] == pytest.approx(0.3)
    assert ig["near_zero_difference"] == 1
    assert ig["completeness_error_max_without_near_zero"] == pytest.approx(0.004)
    assert ig["completeness_absolute_error_max"] == pytest.approx(4e-4)
    assert ig["ig_not_converged"] == 1 and ig["ig_steps_max"] == 512
