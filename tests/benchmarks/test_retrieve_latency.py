"""benchmarks/retrieve_latency.py on the shared micro two-tower run: the fresh-process probe
times ``retrieve`` and the numpy bound for each k and batch, a grown synthetic index is
exported and served, and the approximate index reports recall against exact retrieval."""

import json
import os

import numpy as np
import pytest

from benchmarks import retrieve_latency
from trainer.kinds.item_index import ItemIndex
from trainer.serving.retrieval import catalogue_scores, top_k


def _check_probe(probe, ks, batches):
    assert set(probe["k"]) == {str(k) for k in ks}
    for per_k in probe["k"].values():
        assert set(per_k) == {f"batch{b}" for b in batches}
        for timing in per_k.values():
            for side in ("retrieve", "numpy_bound"):
                assert 0 < timing[side]["p50_ms"] <= timing[side]["p99_ms"]
                assert timing[side]["users_per_s"] > 0
            assert timing["p50_ratio"] == pytest.approx(
                timing["retrieve"]["p50_ms"] / timing["numpy_bound"]["p50_ms"])
    assert probe["load_seconds"] > 0


def test_retrieve_latency_times_each_k_and_batch_in_a_fresh_process(trained_two_tower_run,
                                                                   tmp_path):
    model_dir, _ = trained_two_tower_run
    out = str(tmp_path / "latency")
    assert retrieve_latency.main(["--out", out, "--model_dir", model_dir, "--calls", "3",
                                  "--k", "2", "5", "--batches", "1", "4"]) == 0
    with open(os.path.join(out, "retrieve_latency.json")) as f:
        result = json.load(f)
    assert result["index_items"] == len(ItemIndex.load(model_dir))
    assert result["synthetic_items"] == 0 and result["export_dir"].startswith(model_dir)
    _check_probe(result["fresh_process"], [2, 5], [1, 4])


def test_a_grown_synthetic_index_is_served_and_the_approximate_index_measured(
        trained_two_tower_run, tmp_path):
    pytest.importorskip("faiss")
    model_dir, _ = trained_two_tower_run
    real = len(ItemIndex.load(model_dir))
    out = str(tmp_path / "grown")
    assert retrieve_latency.main(["--out", out, "--model_dir", model_dir, "--calls", "3",
                                  "--k", "3", "--batches", "1", "2",
                                  "--num_items", str(real + 400),
                                  "--ann_sizes", str(real + 400), "--ann_k", "5",
                                  "--ann_ef", "16", "64", "--ann_storage", "sq8",
                                  "--ann_ef_construction", "40",
                                  "--ann_search", "joint", "per_query"]) == 0
    with open(os.path.join(out, "retrieve_latency.json")) as f:
        result = json.load(f)
    assert result["index_items"] == real + 400 and result["synthetic_items"] == 400
    assert result["export_dir"] == os.path.join(out, "export")
    _check_probe(result["fresh_process"], [3], [1, 2])
    approximate = result["approximate"][str(real + 400)]
    assert approximate["k"] == 5 and approximate["build_seconds"] > 0
    assert approximate["storage"] == "sq8"
    assert approximate["ef_construction"] == 40
    # Both searches, every beam each.
    for search in ("joint", "per_query"):
        assert set(approximate[search]) == {"16", "64"}
        for figures in approximate[search].values():
            assert 0.8 <= figures["recall_at_k"] <= 1.0
            assert 0 < figures["batch1_p50_ms"] <= figures["batch1_p99_ms"]
    assert not os.path.exists(os.path.join(out, "retrieval_vectors.npy"))


def test_synthetic_items_follow_the_real_vectors_and_the_bound_ranks_exactly():
    rng = np.random.default_rng(0)
    real = ItemIndex(["a", "b", "c", "d", "e", "f"],
                     rng.normal(size=(6, 3)).astype(np.float32) * [1, 2, 3] + [5, 0, 0],
                     np.array([1, 2, 3, 4, 5, 6], np.int32))
    grown = retrieve_latency.synthetic_index(real, 20000)
    assert grown.item_ids[:6] == real.item_ids and len(grown) == 20000
    np.testing.assert_array_equal(grown.vectors[:6], real.vectors)
    assert set(grown.id_index[6:]) <= set(real.id_index)
    np.testing.assert_allclose(grown.vectors[6:].mean(0), real.vectors.mean(0), atol=0.1)
    np.testing.assert_allclose(np.cov(grown.vectors[6:], rowvar=False),
                               np.cov(real.vectors, rowvar=False), atol=0.2)
    queries = rng.normal(size=(3, 2, 4)).astype(np.float32)
    present = np.array([[1, 0], [1, 1], [0, 1]], bool)
    vectors = np.concatenate([grown.vectors, np.ones((len(grown), 1), np.float32)], 1)
    expected, _ = top_k(catalogue_scores(queries, present, vectors, 0.5), 7)
    np.testing.assert_array_equal(
        retrieve_latency.numpy_bound(queries, present, vectors, 7, 0.5), expected)
