"""``benchmarks/text_tower_cost.py`` on a tiny sequential fixture and a tiny random
checkpoint (offline): one row per variant with its step time, encoding and memory, and
usage errors before anything is written."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import text_tower_cost
from tests.harness import tensorflow_only, write_sequence_fixture, write_tiny_checkpoint

TINY = ["model.hidden_dim=16", "model.intermediate_dim=32", "model.adapter_experts=2",
        "train.batch_size=8", "data.item_max_tokens=12", "data.max_history=5"]


@tensorflow_only
def test_a_row_per_variant_with_its_step_cost(tmp_path, capsys):
    data_dir = write_sequence_fixture(tmp_path / "data")
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", num_layers=2)
    out = tmp_path / "out"
    argv = ["--data_dir", str(data_dir), "--pretrained", checkpoint, "--out", str(out),
            "--layers", "0", "1", "--steps", "1", "--rounds", "1", "--warmup_steps", "1"]
    for override in TINY:
        argv += ["--set", override]
    assert text_tower_cost.main(argv) == 0
    with open(out / "text_tower_cost.json") as f:
        result = json.load(f)
    rows = {row["row"]: row for row in result["rows"]}
    assert list(rows) == ["sasrec/softmax", "frozen/softmax", "top1/softmax"]
    assert [rows[n]["text_trainable_layers"] for n in rows] == [None, 0, 1]
    for row in rows.values():
        assert row["seconds_per_step"] > 0 and row["peak_rss_mb"] > 0
        assert row["examples_per_second"] == pytest.approx(8 / row["seconds_per_step"])
    # The trained layer's copy is counted; the states cache is the larger file.
    assert rows["top1/softmax"]["params"] > rows["frozen/softmax"]["params"]
    sizes = sorted(result["cache_bytes"].values())
    assert len(sizes) == 2 and sizes[1] > sizes[0]
    assert "| top1/softmax |" in capsys.readouterr().out


@pytest.mark.parametrize("extra, match", [
    (["--layers", "-1"], "--layers"), (["--steps", "0"], "--steps"),
    (["--set", "model.no_such_key=1"], "no_such_key")])
def test_bad_arguments_exit_2_before_anything_is_written(tmp_path, capsys, extra, match):
    data_dir = write_sequence_fixture(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        text_tower_cost.main(["--data_dir", str(data_dir), "--pretrained", "none",
                              "--out", str(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_more_layers_than_the_checkpoint_has_exit_2_before_anything_is_written(tmp_path,
                                                                               capsys):
    data_dir = write_sequence_fixture(tmp_path / "data")
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", num_layers=2)
    with pytest.raises(SystemExit) as exit_info:
        text_tower_cost.main(["--data_dir", str(data_dir), "--pretrained", checkpoint,
                              "--out", str(tmp_path / "out"), "--layers", "3"])
    assert exit_info.value.code == 2
    assert "model.text_trainable_layers" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")
