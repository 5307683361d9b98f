"""benchmarks/retrieve_latency.py on the shared micro two-tower run: the fresh-process probe
times ``retrieve`` for each k and reports what the README quotes."""

import json
import os

from benchmarks import retrieve_latency
from trainer.kinds.item_index import ItemIndex


def test_retrieve_latency_times_each_k_in_a_fresh_process(trained_two_tower_run, tmp_path):
    model_dir, _ = trained_two_tower_run
    out = str(tmp_path / "latency")
    assert retrieve_latency.main(["--out", out, "--model_dir", model_dir, "--calls", "3",
                                  "--k", "2", "5"]) == 0
    with open(os.path.join(out, "retrieve_latency.json")) as f:
        result = json.load(f)
    assert result["index_items"] == len(ItemIndex.load(model_dir))
    probe = result["fresh_process"]
    assert set(probe["k"]) == {"2", "5"}
    for timing in probe["k"].values():
        assert 0 < timing["batch1_p50_ms"] <= timing["batch1_p99_ms"]
        assert timing["batch64_users_per_s"] > 0
    assert probe["load_seconds"] > 0
