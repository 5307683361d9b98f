"""Frozen pretrained text vectors of a catalogue, encoded once and cached on disk.

A frozen-text item tower (``model.kind: frozen_two_tower``) reads one pretrained vector per
catalogue text. Encoding 4,385 Amazon titles with all-MiniLM-L6-v2 takes about half a
minute on 2 cores, so the vectors are cached: ``<cache_dir>/text_vectors/<key>.npz``, where
the key is a fingerprint of everything the vectors depend on (the checkpoint's files, the
texts in order, the token limit and the pooling). The training library caches into the run
directory; a benchmark into its output directory, shared by its rows. A stale or damaged
file is never read: the fingerprint is checked, and a mismatch encodes again.

With ``trainable_layers`` (the fine-tune-top-layers variant) the cache holds each text's
word-piece states below those layers instead, ``max_tokens`` times larger, stored as
float16 (the values the model reads are those float16 values, on the first run as on a
reused cache).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time

import numpy as np
import tensorflow as tf

from bert_recommender.models.pretrained_text import PretrainedTextEncoder
from trainer.io import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_DIR = "text_vectors"
_FORMAT = 1


def checkpoint_fingerprint(pretrained: str) -> str:
    """sha256 of a local checkpoint directory's files (names and bytes), or of the preset
    name / handle itself (keras-hub presets and hub handles are versioned by name)."""
    sha = hashlib.sha256()
    if tf.io.gfile.isdir(pretrained):
        for name in sorted(tf.io.gfile.listdir(pretrained)):
            path = os.path.join(pretrained, name)
            if tf.io.gfile.isdir(path):
                continue
            sha.update(name.encode() + b"\0")
            with tf.io.gfile.GFile(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    sha.update(chunk)
    else:
        sha.update(pretrained.encode())
    return sha.hexdigest()


def fingerprint(pretrained: str, texts: list, max_tokens: int, pooling: str,
                trainable_layers: int = 0) -> str:
    """The cache key: the checkpoint, the texts in order, the token limit, the pooling
    (and the trainable top layers left out of the encoding, when there are any)."""
    fields = {"format": _FORMAT, "checkpoint": checkpoint_fingerprint(pretrained),
              "max_tokens": max_tokens, "pooling": pooling}
    if trainable_layers:
        fields["trainable_layers"] = int(trainable_layers)
    sha = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    for text in texts:
        sha.update(text.encode() + b"\0")
    return sha.hexdigest()


def cached_text_vectors(texts: list, pretrained: str, max_tokens: int, pooling: str,
                        cache_dir: str | None = None, batch_size: int = 128,
                        trainable_layers: int = 0) -> tuple:
    """``(vectors [len(texts), F] float32, info)``: the frozen features of ``texts``
    (``PretrainedTextEncoder.encode``: pooled vectors, or the word-piece states below
    ``trainable_layers`` top layers), read
    from ``cache_dir`` when a file with the same fingerprint is there, else encoded (and
    written there atomically when ``cache_dir`` is given).

    ``info`` records ``fingerprint``, ``path`` (or None), ``reused`` and
    ``encode_seconds`` (0 when reused): what a run or a benchmark reports as the one-time
    encoding cost.
    """
    key = fingerprint(pretrained, texts, max_tokens, pooling, trainable_layers)
    path = os.path.join(cache_dir, CACHE_DIR, f"{key[:24]}.npz") if cache_dir else None
    if path and tf.io.gfile.exists(path):
        vectors = _read(path, key, len(texts))
        if vectors is not None:
            log.info("frozen text vectors: %d reused from %s", len(texts), path)
            return vectors, {"fingerprint": key, "path": path, "reused": True,
                             "encode_seconds": 0.0}
    started = time.time()
    encoder = PretrainedTextEncoder.from_pretrained(pretrained, max_tokens, pooling,
                                                    trainable_layers)
    vectors = encoder.encode(list(texts), batch_size=batch_size)
    stored = vectors.astype(np.float16) if trainable_layers else vectors
    vectors = stored.astype(np.float32, copy=False)
    seconds = round(time.time() - started, 1)
    log.info("frozen text vectors: %d texts encoded by %s in %.1f s", len(texts), pretrained,
             seconds)
    if path:
        buffer = io.BytesIO()
        np.savez(buffer, vectors=stored, fingerprint=np.array(key))
        atomic_write_bytes(path, buffer.getvalue())
    return vectors, {"fingerprint": key, "path": path, "reused": False,
                     "encode_seconds": seconds}


def _read(path: str, key: str, rows: int):
    """The cached vectors, or None (logged) when the file is damaged or not this key's."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            with np.load(io.BytesIO(f.read())) as data:
                stored, vectors = str(data["fingerprint"]), data["vectors"]
    except (OSError, ValueError, KeyError) as err:
        log.warning("%s: unreadable (%s); encoding again", path, err)
        return None
    if stored != key or vectors.ndim != 2 or len(vectors) != rows:
        log.warning("%s: written for other texts or another checkpoint; encoding again", path)
        return None
    return vectors.astype(np.float32)
