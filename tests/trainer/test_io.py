"""trainer/io.py: the atomic writers."""

import os

import pytest
import tensorflow as tf

from trainer.io import atomic_directory, atomic_write_text


def test_atomic_writes_leave_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "metrics.json")
    atomic_write_text(path, "old")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tf.io.gfile, "rename", fail)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    with pytest.raises(OSError):
        with atomic_directory(str(tmp_path / "export")) as tmp:
            open(os.path.join(tmp, "a"), "w").close()
    monkeypatch.undo()
    assert open(path).read() == "old"
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]
