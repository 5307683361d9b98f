"""Files the project writes and reads, local or ``gs://`` (through ``tf.io.gfile``):
atomic writers (a reader never sees half a file or directory), JSON and ``.npy`` helpers.

Every module that writes a run, a report or prepared data writes through these, so a
failed write (disk full, permissions, a killed job) leaves the previous version intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid

import numpy as np
import tensorflow as tf


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` (local or ``gs://``) through a temporary file renamed
    into place, so a reader never sees half a file."""
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:  # a failed write (disk full, permissions) leaves no partial file behind
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path: str):
    """Yields a fresh temporary sibling of ``path`` to fill; on success it replaces ``path``
    (the old one is renamed aside first and removed only after the swap), on failure it is
    removed, so ``path`` is never half-written. Works on ``gs://`` too."""
    final = path.rstrip("/")
    tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    tf.io.gfile.makedirs(tmp)
    try:
        yield tmp
        old = None
        if tf.io.gfile.exists(final):
            old = f"{final}.old-{uuid.uuid4().hex[:8]}"
            tf.io.gfile.rename(final, old)
        try:
            tf.io.gfile.rename(tmp, final)
        except Exception:
            if old:  # put the previous version back
                tf.io.gfile.rename(old, final)
            raise
        if old:
            tf.io.gfile.rmtree(old)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)


def atomic_write_text(path: str, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: str, payload, sort_keys: bool = True) -> None:
    """Writes ``payload`` as indented JSON, atomically; numpy scalars/arrays are converted."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys,
                                       default=_json_default) + "\n")


def write_npy(path: str, array) -> None:
    """``np.save`` through tf.io.gfile (local or gs://); write into an
    :func:`atomic_directory` for atomicity."""
    with tf.io.gfile.GFile(path, "wb") as f:
        np.save(f, np.asarray(array))


def read_npy(path: str) -> np.ndarray:
    """``np.load`` through tf.io.gfile (local or gs://)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return np.load(f)
