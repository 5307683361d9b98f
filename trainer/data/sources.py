"""Data sources. Each produces a :class:`~trainer.data.canonical.SplitData`.

``load(data_cfg, default_data_dir)`` dispatches on ``data.source``:

* ``synthetic`` -- generates the catalogue and click log (trainer/data/synthetic.py),
  writes them as the canonical files under ``data.data_dir`` (default ``<model_dir>/data``)
  and reads them back through the same readers a user's own files go through.
* ``files`` -- a user's own ``items`` + ``impressions`` files (CSV or JSONL; see
  canonical.py and the README).
* ``movielens`` / ``mind`` -- the public benchmarks (trainer/data/movielens.py, mind.py).
* ``sequences`` -- sequential-recommendation benchmark files (RecBole atomic files, as
  UniSRec releases the Amazon benchmarks: trainer/data/sequences.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Iterator

import tensorflow as tf

from trainer.config import DataConfig
from trainer.data import canonical, synthetic
from trainer.data.canonical import DataError, SplitData
from trainer.io import atomic_write_text


def _hash_split(impression_id: str, seed: int, validation_fraction: float,
                test_fraction: float) -> str:
    digest = hashlib.sha256(f"{seed}:{impression_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def split_examples(examples: list, data_cfg: DataConfig) -> dict:
    """Groups examples by their ``split`` column; rows without one are assigned by a seeded
    hash of the impression id (so all candidates of an impression share a split)."""
    splits = {name: [] for name in canonical.SPLITS}
    for ex in examples:
        split = ex.split or _hash_split(ex.impression_id, data_cfg.split_seed,
                                        data_cfg.validation_fraction, data_cfg.test_fraction)
        splits[split].append(ex)
    return splits


def load_files(items_path: str, impressions_path: str, data_cfg: DataConfig) -> SplitData:
    """Reads and validates a user's own canonical files."""
    catalogue = canonical.read_catalogue(items_path)
    examples = canonical.read_examples(impressions_path, catalogue)
    splits = split_examples(examples, data_cfg)
    if not splits["train"]:
        raise DataError(f"{impressions_path}: no training rows after splitting; add rows with "
                        "split=train or lower data.validation_fraction/test_fraction")
    info = {"source": "files", "items_file": items_path, "impressions_file": impressions_path,
            "items": len(catalogue),
            "examples": {k: len(v) for k, v in splits.items()}}
    return SplitData(catalogue, splits, info)


def _generate_synthetic(data_cfg: DataConfig, data_dir: str) -> tuple[str, str]:
    """Writes the synthetic files unless the same generator settings already wrote them."""
    params = dict(vars(data_cfg.synthetic))
    file_format = params.pop("file_format")
    params["history_window"] = data_cfg.max_history
    items_path = os.path.join(data_dir, f"items.{file_format}")
    impressions_path = os.path.join(data_dir, f"impressions.{file_format}")
    stamp_path = os.path.join(data_dir, "generator.json")
    stamp = json.dumps({"generator": "synthetic-v1", **params}, sort_keys=True)
    if tf.io.gfile.exists(stamp_path) and tf.io.gfile.exists(items_path) and \
            tf.io.gfile.exists(impressions_path):
        with tf.io.gfile.GFile(stamp_path) as f:
            if f.read() == stamp:
                return items_path, impressions_path
    catalogue, examples = synthetic.generate(**params)
    canonical.write_catalogue(items_path, catalogue)
    canonical.write_examples(impressions_path, examples)
    atomic_write_text(stamp_path, stamp)  # last: marks the pair complete
    return items_path, impressions_path


def load(data_cfg: DataConfig, default_data_dir: str) -> SplitData:
    """Loads the configured source into train/validation/test splits."""
    data_dir = data_cfg.data_dir or default_data_dir
    if data_cfg.source == "synthetic":
        items_path, impressions_path = _generate_synthetic(data_cfg, data_dir)
        data = load_files(items_path, impressions_path, data_cfg)
        data.info.update(source="synthetic", generator=vars(data_cfg.synthetic))
        return data
    if data_cfg.source == "files":
        items_path = data_cfg.items_file or canonical.find_data_file(data_dir, "items")
        impressions_path = data_cfg.impressions_file or \
            canonical.find_data_file(data_dir, "impressions")
        return load_files(items_path, impressions_path, data_cfg)
    if not data_cfg.data_dir:
        raise DataError(f"data.source={data_cfg.source} needs data.data_dir: the directory "
                        "holding the downloaded files")
    if data_cfg.source == "movielens":
        from trainer.data import movielens
        return movielens.load(data_cfg.data_dir, data_cfg.movielens)
    if data_cfg.source == "mind":
        from trainer.data import mind
        return mind.load(data_cfg.data_dir, data_cfg.mind)
    if data_cfg.source == "sequences":
        from trainer.data import sequences
        return sequences.load(data_cfg.data_dir, data_cfg.sequences)
    raise DataError(f"unknown data.source {data_cfg.source!r}")


@dataclasses.dataclass
class StreamingSource:
    """A data source read as a stream: ``examples()`` starts a fresh pass (each example with
    its ``split`` set, the candidates of one impression next to each other). ``held`` says
    whether a pass holds the whole log in memory (a source without a streaming reader);
    ``fork_safe`` whether a pass runs no TensorFlow (file reads through tf.io.gfile do), so
    a forked process may run it (trainer/data/prepare.py)."""

    catalogue: canonical.Catalogue
    examples: Callable[[], Iterator[canonical.Example]]
    info: dict
    held: bool = False
    fork_safe: bool = False
    # parts(n) -> n factories whose passes, one after another, are one pass of examples():
    # a source that can be read in parallel (synthetic with independent users).
    parts: Callable[[int], list] | None = None


def _synthetic_part(params: dict, users: tuple):
    return synthetic.stream(**params, users=users)[1]


def stream(data_cfg: DataConfig, default_data_dir: str) -> StreamingSource:
    """The configured source as a :class:`StreamingSource` (``python -m trainer.task
    prepare``). The synthetic generator streams user by user, straight from the generator
    (no canonical files are written); MovieLens user by user from its typed rating arrays;
    MIND impression by impression from its behaviour files. A user's own files are loaded
    with :func:`load` and then iterated (``held``)."""
    if data_cfg.source == "synthetic":
        params = dict(vars(data_cfg.synthetic))
        params.pop("file_format")
        params["history_window"] = data_cfg.max_history
        catalogue, _ = synthetic.stream(**params)  # validates the settings now
        info = {"source": "synthetic", "generator": vars(data_cfg.synthetic),
                "items": len(catalogue)}
        def parts(count: int) -> list:
            bounds = [round(i * params["num_users"] / count) for i in range(count + 1)]
            return [functools.partial(_synthetic_part, params, (lo, hi))
                    for lo, hi in zip(bounds, bounds[1:])]
        return StreamingSource(catalogue, lambda: synthetic.stream(**params)[1], info,
                               fork_safe=True,
                               parts=parts if params["independent_users"] else None)
    if data_cfg.source == "movielens" and data_cfg.data_dir:
        from trainer.data import movielens
        catalogue, examples, info = movielens.stream(data_cfg.data_dir, data_cfg.movielens)
        # The ratings were read here; a pass only samples from the arrays.
        return StreamingSource(catalogue, examples, info, fork_safe=True)
    if data_cfg.source == "mind" and data_cfg.data_dir:
        from trainer.data import mind
        catalogue, examples, info = mind.stream(data_cfg.data_dir, data_cfg.mind)
        return StreamingSource(catalogue, examples, info)
    data = load(data_cfg, default_data_dir)

    def examples():
        for split in canonical.SPLITS:
            # Impressions contiguous, in order of first appearance.
            order: dict = {}
            for ex in data.splits[split]:
                order.setdefault(ex.impression_id, []).append(ex)
            for group in order.values():
                for ex in group:
                    yield dataclasses.replace(ex, split=split)
    return StreamingSource(data.catalogue, examples, dict(data.info), held=True)
