"""The command line: errors name the key or file and exit with status 2, writing nothing."""

import os

import pytest

from tests.harness import REPO
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
    assert "config.yaml: not found" in capsys.readouterr().err
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


# TensorFlow's start-up lines (oneDNN, CUDA, cuDNN/cuFFT/cuBLAS factories, CPU instructions,
# absl), which the command line hides unless --verbose_backend.
STARTUP_NOISE = ("oneDNN custom operations", "Unable to register", "cpu_feature_guard",
                 "This TensorFlow binary is optimized", "absl::InitializeLog",
                 "could not find cuda drivers", "cuInit")


def _run_cli(*args, tmp_path):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != task.LOG_LEVEL_VARIABLE}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "trainer.task", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_startup_noise_is_hidden_by_default(tmp_path):
    done = _run_cli("evaluate", "--model_dir", str(tmp_path / "missing"), tmp_path=tmp_path)
    assert done.returncode == 2
    assert "config.yaml: not found" in done.stderr
    noise = [line for line in done.stderr.splitlines()
             if any(n.lower() in line.lower() for n in STARTUP_NOISE)]
    assert noise == []


def test_verbose_backend_runs_the_same_command(tmp_path):
    # The noise may or may not appear (it varies by machine): only the outcome is asserted.
    done = _run_cli("evaluate", "--model_dir", str(tmp_path / "missing"), "--verbose_backend",
                    tmp_path=tmp_path)
    assert done.returncode == 2
    assert "config.yaml: not found" in done.stderr


def test_verbose_backend_goes_before_or_after_the_command():
    parser = task._parser()
    assert not parser.parse_args(["evaluate", "--model_dir", "x"]).verbose_backend
    assert parser.parse_args(["--verbose_backend", "evaluate", "--model_dir", "x"]).verbose_backend
    assert parser.parse_args(["evaluate", "--model_dir", "x", "--verbose_backend"]).verbose_backend


def test_startup_lines_are_recognised_and_nothing_else():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796404759.989214    3913 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796404759.989640    3913 cudart_stub.cc:31] Could not find cuda drivers",
        "I0000 00:00:1796404760.036261    3913 cpu_feature_guard.cc:227] This TensorFlow binary",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow",
        "E0000 00:00:1715.1  123 cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting",
        "E0000 00:00:1796405005.542504    7040 cuda_platform.cc:52] failed call to cuInit",
        "2024-01-02 10:11:12.123456: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TRT",
    ]
    kept = ["error: /x/config.yaml: not found", "INFO trainer.train_lib: epoch 1",
            "Traceback (most recent call last):", "F0000 00:00:1.0 1 a.cc:1] Check failed"]
    assert all(task._STARTUP_LINE.match(line) for line in noise)
    assert not any(task._STARTUP_LINE.match(line) for line in kept)
