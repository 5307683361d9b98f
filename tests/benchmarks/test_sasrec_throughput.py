"""benchmarks/sasrec_throughput.py and its RecBole worker: the synthetic files, the rows
from measured windows, and a tiny interleaved run against a fake worker (no RecBole or
torch in this process)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.harness import top_level_imports

from benchmarks import sasrec_throughput as st

WORKER = st.PEER_SCRIPT

FAKE_WORKER = textwrap.dedent("""
    import json, sys
    args = sys.argv[1:]
    flags = dict(zip(args[0::2], args[1::2]))
    def send(obj):
        print(json.dumps(obj), flush=True)
    send({"ready": True, "recbole": "fake", "torch": "fake", "params": 1000,
          "threads": int(flags["--threads"]), "argv": args})
    for line in sys.stdin:
        parts = line.split()
        if parts == ["quit"]:
            break
        k = int(parts[1])
        send({"steps": k, "seconds": 0.5, "examples_per_s": k * int(flags["--batch"]) / 0.5,
              "loss": 1.0})
""")


def test_worker_imports_only_torch_numpy_recbole_and_stdlib():
    # peer_protocol: the standard-library protocol module beside it, imported by path.
    extra = top_level_imports(WORKER) - set(sys.stdlib_module_names) - {
        "torch", "numpy", "recbole", "peer_protocol"}
    assert not extra, extra


def _run_worker(args):
    return subprocess.run([sys.executable, "-I", WORKER, *args], input="",
                          capture_output=True, text=True, timeout=60)


def test_worker_reports_usage_errors_on_the_protocol():
    result = _run_worker(["--num_layers", "2"])
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    assert "required" in json.loads(line)["error"]
    result = _run_worker(["--num_layers", "1", "--hidden", "10", "--heads", "3",
                          "--intermediate", "8", "--vocab", "9", "--seq", "4",
                          "--batch", "2", "--threads", "1"])
    assert result.returncode == 1 and "divisible" in json.loads(result.stdout)["error"]


def test_synthetic_files_name_every_item_as_a_target(tmp_path):
    from trainer.config import SequencesConfig
    from trainer.data import sequences

    st.write_sequence_files(str(tmp_path), items=7, rows=20, seq=4, seed=3)
    data = sequences.load(str(tmp_path), SequencesConfig(name=st.DATASET,
                                                         negatives_per_positive=0,
                                                         eval_negatives=1))
    assert data.info["items"] == 7 and data.info["rows"]["train"] == 20
    train = data.splits["train"]
    assert {ex.candidate for ex in train} == {f"i{k}" for k in range(7)}
    assert all(1 <= len(ex.history) <= 4 for ex in train)
    with pytest.raises(ValueError, match="at least"):
        st.write_sequence_files(str(tmp_path / "x"), items=7, rows=6, seq=4)


def test_rows_are_medians_of_the_measured_windows():
    seconds = {"ours": [1.0, 2.0, 4.0], "recbole": [2.0, 2.0, 8.0]}
    rows = st.rows_from_windows(seconds, steps=10, batch=8, params={"ours": 5, "recbole": 6})
    ours = next(r for r in rows if r["impl"] == "ours")
    assert ours["examples_per_s_windows"] == [80.0, 40.0, 20.0]
    assert ours["examples_per_s"] == 40.0 and ours["params"] == 5
    assert st.ratios(rows) == {"ours": pytest.approx(40.0 / 40.0)}
    assert st.ratios(rows[:1]) == {}


def test_ours_matches_the_peer_where_the_config_can():
    overrides = st.ours_overrides("/data", st.SIZE, 256)
    for expected in ("model.kind=sasrec", "train.loss=full_softmax", "model.user_layers=2",
                     "model.hidden_dim=64", "model.user_heads=2", "model.intermediate_dim=256",
                     "data.max_history=50", "model.dropout=0.5", "train.batch_size=256",
                     "train.learning_rate=0.001", "train.weight_decay=0", "train.clipnorm=0"):
        assert expected in overrides


def test_a_tiny_interleaved_run_against_a_fake_worker(tmp_path, capsys):
    fake = tmp_path / "fake_worker.py"
    fake.write_text(FAKE_WORKER)
    out = tmp_path / "out"
    code = st.main(["--out", str(out), "--items", "12", "--batch", "4", "--seq", "5",
                    "--hidden", "8", "--intermediate", "16", "--layers", "1",
                    "--train_rows", "24", "--rounds", "2", "--steps", "2",
                    "--warmup_steps", "1", "--peer_python", sys.executable,
                    "--peer_script", str(fake)])
    assert code == 0
    with open(out / "sasrec_throughput.json") as f:
        result = json.load(f)
    assert [r["impl"] for r in result["rows"]] == ["ours", "recbole"]
    rows = {r["impl"]: r for r in result["rows"]}
    # The fake worker's windows come back as they are ...
    assert rows["recbole"]["seconds_windows"] == [0.5, 0.5]
    assert rows["recbole"]["examples_per_s"] == pytest.approx(2 * 4 / 0.5)
    # ... and ours are timed here: steps x batch over each measured window, their median.
    ours = rows["ours"]
    assert len(ours["seconds_windows"]) == 2 and all(s > 0 for s in ours["seconds_windows"])
    rates = [2 * 4 / s for s in ours["seconds_windows"]]
    assert ours["examples_per_s_windows"] == pytest.approx(rates)
    assert ours["examples_per_s"] == pytest.approx(sum(rates) / 2)
    assert result["ratio"]["ours"] == pytest.approx(ours["examples_per_s"] / 16.0)
    assert result["goal"]["met"] == (result["ratio"]["ours"] >= st.GOAL)
    # The worker got the same sizes; ours is the sasrec kind over the same catalogue.
    argv = result["machine"]["peer"]["argv"]
    flags = dict(zip(argv[0::2], argv[1::2]))
    assert (flags["--vocab"], flags["--seq"], flags["--batch"], flags["--hidden"]) == (
        "12", "5", "4", "8")
    assert result["ours"]["ours"]["catalogue_size"] == 12
    assert result["ours"]["ours"]["training_rows"] == 24
    assert result["parameters"]["recbole"] == 1000
    assert result["parameters"]["ours"] == ours["params"] > 12 * 8
    assert len(result["machine"]["load_average_before"]) == 3
    assert result["settings"]["differences"] == st.DIFFERENCES
    assert "ours/recbole" in capsys.readouterr().out
    assert not os.path.exists(out / "data")  # the synthetic files stay in a temporary dir
