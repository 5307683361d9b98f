"""The synthetic generator: determinism, the recorded truth, and its written files."""

import math

import numpy as np

from trainer.data import sources
from trainer.evaluation import metrics
from trainer.data import synthetic

SMALL = dict(num_items=60, num_users=30, impressions_per_user=4, candidates_per_impression=4,
             min_history=3, max_history=6, query_fraction=0.5)


def test_deterministic_per_seed():
    cat_a, ex_a = synthetic.generate(seed=3, **SMALL)
    cat_b, ex_b = synthetic.generate(seed=3, **SMALL)
    _, ex_c = synthetic.generate(seed=4, **SMALL)
    assert [e.candidate for e in ex_a] == [e.candidate for e in ex_b]
    assert [e.label for e in ex_a] == [e.label for e in ex_b]
    assert [e.candidate for e in ex_a] != [e.candidate for e in ex_c]
    assert {k: v.fields for k, v in cat_a.items()} == {k: v.fields for k, v in cat_b.items()}


def test_recorded_probability_and_reasons_follow_the_formula():
    catalogue, examples = synthetic.generate(seed=5, **SMALL)
    for ex in examples:
        cand = catalogue[ex.candidate]
        attrs = set(cand.fields["attributes"].split())
        category = cand.fields["categories"]
        # Every cited history item is recent and shares an attribute with the candidate.
        recent = ex.history[-synthetic.HISTORY_WINDOW:]
        for h in ex.extras["true_reason_history"]:
            assert h in recent
            assert attrs & set(catalogue[h].fields["attributes"].split())
        uncited = [h for h in recent if h not in ex.extras["true_reason_history"]]
        for h in uncited:
            assert not attrs & set(catalogue[h].fields["attributes"].split())
        # Every reason token is a word of the candidate's text.
        words = set(cand.text(["title", "categories", "description"]).replace(".", "").split())
        assert set(ex.extras["true_reason_tokens"]) <= words
        p = ex.extras["true_probability"]
        assert 0 < p < 1
        # Recompute the non-hidden part of the logit: the remainder is taste/favourite terms,
        # which can only be one of a few known values.
        hist_term = synthetic.HISTORY_WEIGHT * min(len(ex.extras["true_reason_history"]), 2)
        query_term = 0.0
        if ex.query:
            query_term = (synthetic.QUERY_MATCH if category in ex.query.split()
                          else synthetic.QUERY_MISMATCH)
        rest = math.log(p / (1 - p)) - synthetic.BIAS - hist_term - query_term
        possible = [t * synthetic.TASTE_WEIGHT + f * synthetic.CATEGORY_WEIGHT
                    for t in (0, 1, 2) for f in (0, 1)]
        assert min(abs(rest - v) for v in possible) < 1e-3


def test_query_impressions_show_the_queried_category():
    catalogue, examples = synthetic.generate(seed=6, **SMALL)
    with_query = [e for e in examples if e.query]
    assert with_query
    shares = [catalogue[e.candidate].fields["categories"] in e.query.split() for e in with_query]
    assert np.mean(shares) >= 0.5


def test_temporal_split_and_oracle_beats_chance():
    _, examples = synthetic.generate(seed=8, **dict(SMALL, num_users=200))
    by_split = {s: [e for e in examples if e.split == s] for s in ("train", "validation", "test")}
    assert len(by_split["test"]) == 200 * SMALL["candidates_per_impression"]
    assert len(by_split["validation"]) == len(by_split["test"])
    test = by_split["test"]
    oracle = metrics.auc(np.array([e.label for e in test]),
                         np.array([e.extras["true_probability"] for e in test]))
    assert oracle > 0.7


def test_load_writes_canonical_files_and_reuses_them(tmp_path, tiny_config):
    cfg = tiny_config().data
    data = sources.load(cfg, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "generator.json", "impressions.csv", "items.csv"]
    assert data.info["source"] == "synthetic"
    assert all(data.splits[s] for s in ("train", "validation", "test"))
    assert "true_probability" in data.splits["test"][0].extras
    mtime = (tmp_path / "items.csv").stat().st_mtime_ns
    sources.load(cfg, str(tmp_path))
    assert (tmp_path / "items.csv").stat().st_mtime_ns == mtime  # same settings: reused


def test_stream_is_generate_and_eval_users_fix_the_evaluated_users():
    catalogue, examples = synthetic.generate(seed=3, **SMALL)
    streamed_catalogue, stream = synthetic.stream(seed=3, **SMALL)
    assert {k: v.fields for k, v in streamed_catalogue.items()} == \
        {k: v.fields for k, v in catalogue.items()}
    assert list(stream) == examples
    # eval_users changes the splits only: the first users keep validation and test, the
    # others train on all their impressions; the log itself is the same.
    _, fixed = synthetic.generate(seed=3, eval_users=5, **SMALL)
    assert [(e.impression_id, e.candidate, e.label) for e in fixed] == \
        [(e.impression_id, e.candidate, e.label) for e in examples]
    evaluated = {e.user_id for e in fixed if e.split != "train"}
    assert evaluated == {f"u{i:05d}" for i in range(5)}
    assert {e.split for e in fixed if e.user_id == "u00005"} == {"train"}
