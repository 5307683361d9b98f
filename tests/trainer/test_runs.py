"""The run contract (trainer/runs.py): one way to open a finished run, its manifest, and a
clear error (exit 2, naming the file) for every damaged, truncated or missing artefact,
from every command that opens runs."""

import json
import os
import shutil

import pytest

from tests.harness import REPO
from trainer import runs, task
from trainer.errors import RunDirError

# What a two-tower run's manifest lists, beyond the export directories' own files.
TWO_TOWER_ARTEFACTS = ("config.yaml", "data_info.json", "vocab.txt", "featurizer.json",
                       "catalogue.json", "model.keras", "item_index/vectors.npy",
                       "item_index/id_index.npy", "item_index/item_ids.json",
                       "export/saved_model.pb", "export_tokens/token_contract.json",
                       "metrics.json")


@pytest.fixture
def copied_run(trained_two_tower_run, tmp_path):
    """A copy of the shared two-tower run that a test may damage."""
    target = str(tmp_path / "run")
    shutil.copytree(trained_two_tower_run[0], target)
    return target


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _flip_a_byte(path):
    with open(path, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


DAMAGE = {"truncated": _truncate, "missing": os.remove, "altered": _flip_a_byte}


def test_the_manifest_lists_every_artefact_with_size_and_checksum(trained_two_tower_run):
    model_dir = trained_two_tower_run[0]
    with open(os.path.join(model_dir, runs.MANIFEST)) as f:
        manifest = json.load(f)
    assert manifest["format"] == runs.RUN_FORMAT
    assert set(TWO_TOWER_ARTEFACTS) <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == os.path.getsize(os.path.join(model_dir, name)), name
        assert len(entry["sha256"]) == 64
    assert runs.verify(model_dir) == manifest


def test_open_run_reads_nothing_of_the_data(trained_two_tower_run, monkeypatch):
    """Opening a run for serving needs its own files only: the data source is never read."""
    from trainer.data import sources

    def no_data(*args, **kwargs):
        raise AssertionError("the data source was read")

    monkeypatch.setattr(sources, "load", no_data)
    run = runs.open_run(trained_two_tower_run[0])
    assert run.kind.name == "two_tower" and run.item_index is not None
    assert len(run.featurizer.item_ids) == len(run.catalogue) + 1
    assert run.model.name and run.ids.items  # everything a recommender needs


def test_the_saved_featurizer_equals_the_one_built_from_the_data(trained_two_tower_run):
    from trainer.training import train_lib

    run = runs.open_run(trained_two_tower_run[0])
    rebuilt = train_lib.make_packer(run.cfg, run.vocabulary, run.prepared())
    saved = run.featurizer
    assert saved.item_ids == rebuilt.item_ids and saved.item_texts == rebuilt.item_texts
    assert (saved.trained_mask == rebuilt.trained_mask).all()
    assert (saved.item_tokens == rebuilt.item_tokens).all()


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("artefact", TWO_TOWER_ARTEFACTS)
def test_a_damaged_artefact_is_named_and_exits_2(copied_run, artefact, damage, capsys):
    DAMAGE[damage](os.path.join(copied_run, artefact))
    code = task.main(["recommend", "--model_dir", copied_run, "--history", ""])
    err = capsys.readouterr().err
    assert code == 2, err
    assert artefact in err and "Traceback" not in err, err


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_manifest_is_named_and_exits_2(copied_run, damage, capsys):
    DAMAGE[damage](os.path.join(copied_run, runs.MANIFEST))
    assert task.main(["recommend", "--model_dir", copied_run, "--history", ""]) == 2
    err = capsys.readouterr().err
    assert runs.MANIFEST in err and ("damaged" in err or "not found" in err), err


def test_a_run_of_another_format_is_refused(copied_run):
    path = os.path.join(copied_run, runs.MANIFEST)
    with open(path) as f:
        manifest = json.load(f)
    manifest["format"] = runs.RUN_FORMAT + 1
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(RunDirError, match="run format 2; this version reads format 1"):
        runs.open_run(copied_run)


def _commands(run_dir):
    """Every command that opens a finished run, pointed at ``run_dir``."""
    tiny = os.path.join(REPO, "configs", "tiny.yaml")
    return {
        "evaluate": ["evaluate", "--model_dir", run_dir],
        "export": ["export", "--model_dir", run_dir],
        "predict": ["predict", "--model_dir", run_dir, "--user_text", "a", "--item_text", "b"],
        "recommend": ["recommend", "--model_dir", run_dir, "--history", ""],
        "explain": ["explain", "--model_dir", run_dir, "--num_examples", "1"],
        "audit": ["audit", "--model_dir", run_dir, "--bootstrap", "0"],
        "distill": ["distill", "--teacher_dir", run_dir, "--config", tiny,
                    "--model_dir", os.path.join(os.path.dirname(run_dir), "student")],
    }


@pytest.mark.parametrize("command", sorted(_commands("x")))
def test_every_command_that_opens_runs_names_a_cut_model(copied_run, command, capsys):
    _truncate(os.path.join(copied_run, runs.MODEL))
    assert task.main(_commands(copied_run)[command]) == 2
    err = capsys.readouterr().err
    assert f"{runs.MODEL}: " in err and "cut short" in err, err
    assert not os.path.exists(os.path.join(os.path.dirname(copied_run), "student"))


def test_a_run_that_did_not_finish_says_so(copied_run, capsys):
    os.remove(os.path.join(copied_run, runs.MANIFEST))
    assert task.main(["evaluate", "--model_dir", copied_run]) == 2
    assert "did not finish training" in capsys.readouterr().err


def test_export_rewrites_the_manifest(copied_run):
    before = runs.verify(copied_run)
    assert task.main(["export", "--model_dir", copied_run]) == 0
    after = runs.verify(copied_run)  # the new export files are recorded, the rest unchanged
    assert {k: v for k, v in after["files"].items() if not k.startswith("export")} == \
        {k: v for k, v in before["files"].items() if not k.startswith("export")}
