"""explainability.report: well-formed, escaped, self-contained HTML from hand-built records."""

import html
import re
from html.parser import HTMLParser

import pytest

from bert_recommender.explainability.report import render_report

PAYLOAD = "<script>alert(1)</script> \"double\" & 'single'"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}

FAITHFULNESS = {
    "num_examples": 3, "bins": [0.01, 0.05, 0.1, 0.2, 0.5],
    "explained_quantity": "click probability",
    "methods": {
        "integrated_gradients": {"comprehensiveness": 0.4123, "comprehensiveness_ci": [0.3, 0.5],
                                 "sufficiency": 0.1, "aopc": 0.2, "deletion_auc": 0.3,
                                 "insertion_auc": 0.6, "completeness_error": 0.01,
                                 "truth_precision@5": 0.8, "truth_precision@5_ci": [0.7, 0.9],
                                 "truth_recall@5": 0.5, "seconds_per_example": 0.25},
        "occlusion": {"comprehensiveness": 0.35, "sufficiency": float("nan"), "custom_metric": 7},
        "random": {"comprehensiveness": 0.05},
    },
    "history_methods": {
        "leave_one_out": {"deletion_auc": 0.2, "deletion_auc_ci": [0.1, 0.3],
                          "truth_precision@1": 0.9},
        "shapley": {"deletion_auc": 0.15, "insertion_auc": 0.7},
    },
}

WORDS = [("looking", "user", -1), ("for", "user", -1), ("acme", "user", 0), ("speaker", "user", 0),
         ("blender", "user", 1), ("acme", "item", 0), ("wireless", "item", 0)]


def full_record():
    return {
        "example": {"index": 12, "impression_id": "u00012-3", "user_id": "u00012",
                    "candidate_id": "i0042", "label": 1},
        "score": 0.81, "rank": 1, "impression_size": 5,
        "words": [{"text": t, "segment": s, "part": p} for t, s, p in WORDS],
        "token_attributions": {
            "integrated_gradients": [0.5, -0.4, 0.1, 0.0, -0.05, 0.2, 0.3],
            "gradient_x_input": [0.1, 0.1, 0.2, 0.0, 0.0, 0.3, 0.9],
            "occlusion": [0.0, 0.0, 0.1, 0.1, -0.2, 0.3, 0.4],
        },
        "completeness": {"integrated_gradients": {
            "attribution_sum": 0.65, "score_difference": 0.66, "relative_error": 0.015}},
        "history": [{"item_id": "i0007", "title": "acme wireless speaker"},
                    {"item_id": "i0009", "title": "kitchen blender"}],
        "history_attributions": {"leave_one_out": [0.3, -0.05], "shapley": [0.25, -0.02]},
        "shapley_permutations": 32,
        "counterfactual": {"found": True, "removed": ["i0007"],
                           "removed_titles": ["acme wireless speaker"], "score_before": 0.81,
                           "score_after": 0.43, "rank_before": 1, "rank_after": 4,
                           "criterion": "leaves the top 1 of its impression", "verified": True},
        "sentence": "Recommended 'acme wireless' (score 0.81) mainly because of acme.",
        "truth": {"reason_tokens": ["wireless"], "reason_history": ["i0007"]},
    }


def sparse_record():
    return {"example": {"candidate_id": "i0001", "label": 0}, "score": 0.2,
            "words": [{"text": "plain", "segment": "item", "part": 0}],
            "counterfactual": {"found": False, "criterion": "leaves the top 1", "tried": 3}}


def hostile_record():
    return {"example": {"candidate_id": "i0666", "label": 0}, "score": float("nan"), "rank": None,
            "words": [{"text": "evil", "segment": "user", "part": 0},
                      {"text": "gadget", "segment": "item", "part": 0}],
            "token_attributions": {"integrated_gradients": [float("nan"), 0.2]},
            "history": [{"item_id": "i0666", "title": PAYLOAD}],
            "history_attributions": {"leave_one_out": [float("nan")]},
            "sentence": f"Recommended '{PAYLOAD}'."}


class WellFormed(HTMLParser):
    """Fails on any mismatched close tag; collects every start tag's attributes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <line .../>: opens and closes at once
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()


def parse(page):
    parser = WellFormed()
    parser.feed(page)
    parser.close()
    assert not parser.stack, f"unclosed tags: {parser.stack}"
    return parser


@pytest.fixture
def page():
    return render_report([full_record(), sparse_record(), hostile_record()], FAITHFULNESS,
                         title="Demo <report>")


def test_well_formed_and_doctype(page):
    assert page.startswith("<!DOCTYPE html>")
    parse(page)


def test_payload_only_escaped(page):
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;double&quot;" in page and "&#x27;single&#x27;" in page
    assert "Demo &lt;report&gt;" in page


def test_words_methods_and_columns_present(page):
    for record in (full_record(), sparse_record(), hostile_record()):
        for word in record["words"]:
            assert html.escape(word["text"]) in page
    names = list(FAITHFULNESS["methods"]) + list(FAITHFULNESS["history_methods"])
    names += list(full_record()["token_attributions"])
    names += list(full_record()["history_attributions"])
    for name in names:
        assert name in page
    columns = {k for table in ("methods", "history_methods") for m in FAITHFULNESS[table].values()
               for k in m if not k.endswith("_ci")}
    for column in columns:
        assert f"<th>{column}" in page
    # Preferred order first, then the rest alphabetically.
    assert page.index("<th>comprehensiveness") < page.index("<th>seconds_per_example") \
        < page.index("<th>custom_metric")
    assert "[0.300, 0.500]" in page and "[0.700, 0.900]" in page and "[0.100, 0.300]" in page
    assert "higher is better" in page and "lower is better" in page


def test_colours_tooltips_and_truth(page):
    tags = parse(page).tags
    ig = [a for t, a in tags
          if t == "span" and a.get("title", "").startswith("integrated_gradients:")]
    positive, negative = ig[0], ig[1]  # full record: +0.5 and -0.4
    assert positive["title"] == "integrated_gradients: 0.500"
    assert positive["style"] != negative["style"]
    assert "rgba(214,39,40,1.00)" in positive["style"]  # red, full intensity
    assert "rgba(31,119,180,0.80)" in negative["style"]  # blue, 0.4 / 0.5
    assert any(a["title"] == "integrated_gradients: n/a" for a in ig)  # the NaN attribution
    assert "[SEP]" in page
    words = [a for t, a in tags if t == "span" and "title" in a and "w" in a["class"].split()]
    underlined = [a for a in words if "tok-truth" in a["class"]]
    assert len(underlined) == 3  # "wireless" once per method row of the full record
    rects = [a for t, a in tags if t == "rect"]
    assert len(rects) == 4  # 2 items x 2 methods; the NaN history value draws no bar
    assert len({r["fill"] for r in rects}) == 2
    assert 'class="reason"' in page


def test_counterfactual_and_missing_values(page):
    assert "verified by re-scoring" in page and "leaves the top 1 of its impression" in page
    assert "none found" in page and "tried 3" in page
    assert "score n/a" in page and "rank n/a" in page
    assert not re.search(r"\bnan\b", page, re.IGNORECASE)


def test_self_contained_file(page, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    assert text == page
    for needle in ('src="http', "src='http", 'href="http', "href='http", "<link", "url("):
        assert needle not in text


def test_empty_inputs():
    page = render_report([], {})
    parse(page)
    assert "No examples." in page
