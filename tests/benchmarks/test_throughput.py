"""benchmarks/throughput.py: FLOP counting by hand, the windows protocol, the JSON shape."""

import json

import pytest

from benchmarks import throughput


def test_forward_flops_of_the_tiny_size_by_hand():
    # L=2, H=64, I=256, S=128. Per layer: QKV+output projections 8*S*H*H = 4,194,304;
    # QK^T and attention x V 4*S*S*H = 4,194,304; feed-forward 4*S*H*I = 8,388,608.
    per_layer = 4_194_304 + 4_194_304 + 8_388_608
    pooler_and_head = 2 * 64 * 64 + 2 * 64
    expected = 2 * per_layer + pooler_and_head
    assert throughput.forward_flops_per_example(2, 64, 256, 128) == expected == 33_562_752
    assert throughput.training_flops_per_example(throughput.SIZES["tiny"]) == 3 * expected


def test_minilm_flops_scale_as_expected():
    size = throughput.SIZES["minilm"]
    flops = throughput.forward_flops_per_example(sequence_length=128, **size)
    # Doubling the sequence doubles the linear terms and quadruples attention.
    s, h, i, layers = 128, 384, 1536, 6
    linear = layers * (8 * s * h * h + 4 * s * h * i)
    attention = layers * 4 * s * s * h
    assert flops == linear + attention + 2 * h * h + 2 * h
    doubled = throughput.forward_flops_per_example(sequence_length=256, **size)
    assert doubled == 2 * linear + 4 * attention + 2 * h * h + 2 * h


class FakeTrainer:
    def __init__(self, name, log, seconds):
        self.name, self.log, self.seconds = name, log, seconds

    def window(self, steps):
        self.log.append((self.name, steps))
        return self.seconds


def test_windows_are_interleaved_and_rows_use_the_median():
    log = []
    trainers = {"ours": FakeTrainer("ours", log, 2.0), "torch": FakeTrainer("torch", log, 4.0)}
    seconds = throughput.interleaved_windows(trainers, steps=10, rounds=3)
    assert log == [("ours", 10), ("torch", 10)] * 3
    rows = throughput.training_rows("tiny", seconds, steps=10, peak_gflops=100.0)
    ours = next(r for r in rows if r["impl"] == "ours")
    assert ours["train_examples_per_s"] == pytest.approx(10 * throughput.BATCH_SIZE / 2.0)
    flops = throughput.training_flops_per_example(throughput.SIZES["tiny"])
    assert ours["mfu"] == pytest.approx(80.0 * flops / 100e9)


@pytest.mark.slow
def test_a_micro_run_writes_the_documented_json(tmp_path, capsys):
    # Without the XLA row (the same trainer with jit_compile=True; its tracing took about
    # 20 s on 2 cores) and with one scaling process (each a fresh TensorFlow, about 24 s).
    code = throughput.main(["--out", str(tmp_path), "--sizes", "tiny", "--rounds", "1",
                            "--window_scale", "0.05", "--examples", "200", "--no_xla",
                            "--scaling_examples", "48", "--scaling_factors", "2",
                            "--serving_sizes", "tiny"])
    assert code == 0
    with open(tmp_path / "throughput.json") as f:
        result = json.load(f)
    assert result["machine"]["matmul_peak_gflops"] > 0
    assert {r["impl"] for r in result["rows"]} == {"ours", "kerashub"}
    for row in result["rows"]:
        assert row["size"] == "tiny"
        assert row["train_examples_per_s"] > 0 and 0 < row["mfu"] < 1
    assert result["input_pipeline"]["ratio_to_fastest_training"] > 0
    serving = result["serving"]["tiny"]
    fresh = serving["saved_model_fresh_process"]
    assert {"raw_strings", "token_ids", "load_seconds"} <= set(fresh)
    assert fresh["raw_strings"]["batch1_p99_ms"] >= fresh["raw_strings"]["batch1_p50_ms"] > 0
    assert "raw_string_overhead_batch64" in serving
    assert result["explanation_cost"]["tiny"]["ig_in_train_steps"] > 0
    assert [run["factor"] for run in result["scaling"]["runs"]] == [2]
    assert all(run["peak_rss_mb"] > 0 for run in result["scaling"]["runs"])
    assert "matmul peak" in capsys.readouterr().out
