"""The command line: errors name the key or file and exit with status 2, writing nothing."""

import os

import pytest

from tests.conftest import REPO
from trainer import task

TINY = os.path.join(REPO, "configs", "tiny.yaml")


def test_unknown_override_key_exits_2_and_writes_nothing(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code = task.main(["train", "--config", TINY, "--model_dir", str(model_dir),
                      "--set", "train.learnin_rate=1"])
    assert code == 2
    assert "unknown config key 'train.learnin_rate'" in capsys.readouterr().err
    assert not model_dir.exists()


def test_wrong_type_exits_2(tmp_path, capsys):
    code = task.main(["train", "--config", TINY, "--model_dir", str(tmp_path / "r"),
                      "--set", "model.num_layers=many"])
    assert code == 2
    assert "'model.num_layers' expects int" in capsys.readouterr().err


def test_missing_data_files_exit_2(tmp_path, capsys):
    code = task.main(["train", "--config", TINY, "--model_dir", str(tmp_path / "r"),
                      "--set", "data.source=files", "--set", f"data.data_dir={tmp_path}"])
    assert code == 2
    assert "no items.csv or items.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_evaluate_on_a_directory_without_a_run(tmp_path, capsys):
    assert task.main(["evaluate", "--model_dir", str(tmp_path)]) == 2
    assert "config.yaml: not found" in capsys.readouterr().err


def test_predict_needs_a_finished_run_and_matching_counts(tmp_path, capsys):
    assert task.main(["predict", "--model_dir", str(tmp_path), "--user_text", "a",
                      "--item_text", "b", "--item_text", "c"]) == 2
    assert "as many --item_text" in capsys.readouterr().err
    assert task.main(["predict", "--model_dir", str(tmp_path), "--user_text", "a",
                      "--item_text", "b"]) == 2
    assert "no SavedModel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        task.main(["predict", "--model_dir", str(tmp_path)])  # argparse: missing args


def test_predict_on_a_two_tower_run(trained_two_tower_run, capsys):
    model_dir, _ = trained_two_tower_run
    code = task.main(["predict", "--model_dir", model_dir,
                      "--user_text", "looking for a camera ; acme wireless camera",
                      "--item_text", "globex wireless camera pro",
                      "--user_text", " ; a ; b ; c ; d ; e ; f ; g",  # longer than H
                      "--item_text", "initech phone"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert all(0.0 < float(line.split("\t")[0]) < 1.0 for line in lines)
