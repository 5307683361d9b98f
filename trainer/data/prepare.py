"""Converts a data source once into sharded TFRecords that ``train`` and ``evaluate`` stream.

    python -m trainer.task prepare --config configs/scale.yaml --out gs://BUCKET/prepared/scale

or ``data.tfrecord_dir`` in a config (``train`` prepares it on first use). The directory
holds, written atomically (``manifest.json`` last, so a directory with a manifest is
complete)::

    train-NNNNN.tfrecord        blocks of pair-table rows (input_pipeline.ShardWriter)
    validation-NNNNN.tfrecord   the same for the evaluation splits
    test-NNNNN.tfrecord
    validation.jsonl, test.jsonl  the evaluation examples in the canonical format: metrics,
                                reports and explanations read their rows (a small share)
    catalogue.jsonl             the items (canonical format)
    vocab.txt                   the WordPiece vocabulary learned from the catalogue + queries
    ids.json                    the sorted training users and the items training saw
                                (IdVocabulary)
    item_counts.npy             clicked training rows per item index (popularity, log q)
    manifest.json               the data config it was prepared from, counts, shard lists

One pass over the source, chunk by chunk: memory grows with the distinct queries and the
evaluation splits (kept for explanations), and by a few bytes a training user (their ids,
as one sorted byte array), not with the training examples. Shards keep each row's raw user
id; the input pipeline numbers them from the sorted training users, which are only known
at the end. A directory is tied to the ``data`` config it was prepared from: training with
another (a different vocabulary size, history length, split...) is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import queue as queue_lib
import time

import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from trainer.data import sources, input_pipeline
from trainer.data import canonical
from trainer.io import atomic_directory, atomic_write_text, write_json
from trainer.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = "bert-recommender-tfrecords-v2"
MANIFEST = "manifest.json"
CHUNK_EXAMPLES = 20000  # examples turned into pair-table rows at a time
# Processes generating a source that can be read in parts (synthetic with independent
# users); this process converts what they produce.
PARALLEL_READERS = max(1, min(4, os.cpu_count() or 1))
# Data keys that change how the shards are read, not what they hold.
_READ_KEYS = ("tfrecord_dir", "shuffle_buffer", "cache_tokens")


def data_fingerprint(cfg: config_lib.ExperimentConfig) -> dict:
    """The part of the config a prepared directory depends on: the ``data`` section."""
    data = config_lib.to_dict(cfg)["data"]
    for key in _READ_KEYS:
        data.pop(key, None)
    return data


def read_manifest(directory: str) -> dict | None:
    path = os.path.join(directory, MANIFEST)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a directory prepared by this version ({FORMAT}); "
                        "prepare the data again into a new directory")
    return manifest


def check_manifest(cfg: config_lib.ExperimentConfig, manifest: dict, directory: str) -> None:
    """Refuses a prepared directory whose data config is not ``cfg``'s."""
    expected = data_fingerprint(cfg)
    if manifest["data"] != expected:
        diff = config_lib.diff_keys({"data": manifest["data"]}, {"data": expected})
        raise ConfigError(
            f"data.tfrecord_dir={directory} was prepared from another data config (differs "
            f"at {', '.join(diff[:5])}); prepare this config into a new directory "
            "(python -m trainer.task prepare --config C --out DIR)")


def _vocab_digest(vocabulary: list) -> str:
    return hashlib.sha256("\n".join(vocabulary).encode("utf-8")).hexdigest()


def _chunks(examples, size: int):
    """Lists of about ``size`` examples, cut between impressions (their rows share a
    group id, which a chunk assigns)."""
    chunk: list = []
    for ex in examples:
        if len(chunk) >= size and ex.impression_id != chunk[-1].impression_id:
            yield chunk
            chunk = []
        chunk.append(ex)
    if chunk:
        yield chunk


@dataclasses.dataclass
class _Part:
    """One split's rows of a chunk, converted: what the writing loop needs, compact enough
    to pass between processes (no Example objects except the few evaluation ones)."""

    split: str
    table: input_pipeline.PairTable  # user_index 0, user_id set: the pipeline numbers users
    train_users: np.ndarray | None  # training splits: the part's distinct user ids (bytes)
    trained_items: set  # candidates and full histories of training rows
    queries: set  # training queries (the vocabulary learns them)
    held: list | None  # the evaluation examples themselves (canonical copies)


def _parts(examples, catalogue, cfg: config_lib.ExperimentConfig, items: dict):
    """:class:`_Part` s of a pass over ``examples``, chunk by chunk."""
    no_users = input_pipeline.IdVocabulary(users={}, items=items)
    for chunk in _chunks(examples, CHUNK_EXAMPLES):
        by_split: dict = {}
        for ex in chunk:
            if ex.candidate not in catalogue:
                raise DataError(f"impression {ex.impression_id}: candidate {ex.candidate!r} "
                                "is not in the catalogue")
            by_split.setdefault(ex.split, []).append(ex)
        for split, rows in by_split.items():
            table = input_pipeline.make_pair_table(
                rows, catalogue, cfg.data.item_text_fields, cfg.data.max_history, no_users)
            table.user_id = np.array([ex.user_id for ex in rows], dtype=object)
            trained, queries, train_users = set(), set(), None
            if split == "train":
                for ex in rows:
                    trained.add(ex.candidate)
                    trained.update(ex.history)
                    if ex.query:
                        queries.add(ex.query)
                train_users = _SortedStrings.encode(set(table.user_id))
            yield _Part(split, table, train_users, trained, queries,
                        None if split == "train" else rows)


class _SortedStrings:
    """A growing set of strings kept as one sorted numpy byte array (UTF-8, whose byte
    order is Python's string order): a few bytes an entry where a Python set or dict costs
    ~100, which made ``prepare``'s memory grow 15% from 25k to 500k users. Added batches
    are merged when they outgrow the merged part, so sorting costs O(n log n) overall."""

    MERGE_AT = 1 << 16  # pending entries that force a merge (or the merged size if more)

    def __init__(self):
        self._merged = np.array([], dtype=bytes)
        self._pending: list = []
        self._pending_size = 0

    @staticmethod
    def encode(strings) -> np.ndarray:
        return np.unique(np.array([s.encode("utf-8") for s in strings], dtype=bytes))

    def add(self, encoded: np.ndarray) -> None:
        self._pending.append(encoded)
        self._pending_size += len(encoded)
        if self._pending_size > max(self.MERGE_AT, len(self._merged)):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._merged = np.unique(np.concatenate([self._merged, *self._pending]))
            self._pending, self._pending_size = [], 0

    def __len__(self) -> int:
        self._merge()
        return len(self._merged)

    def decoded_chunks(self, size: int = 1 << 14):
        """The strings in sorted order, ``size`` at a time."""
        self._merge()
        for start in range(0, len(self._merged), size):
            yield [b.decode("utf-8") for b in self._merged[start:start + size].tolist()]


def _write_ids(path: str, train_users: _SortedStrings, trained_items: list) -> None:
    """``ids.json``, its user list written a chunk at a time (millions of users would
    otherwise be held as Python strings and one JSON text)."""
    with tf.io.gfile.GFile(path, "w") as f:
        f.write('{"trained_items": ' + json.dumps(trained_items) + ',\n "train_users": [')
        for i, chunk in enumerate(train_users.decoded_chunks()):
            f.write(("," if i else "") + json.dumps(chunk)[1:-1])
        f.write("]}\n")


def _parts_from_children(factories: list, convert, info: dict):
    """``convert(factory())`` of each factory, each run by a forked child process, taken
    in turn (the first part of each, then the second...: the order is fixed), so reading
    or generating the source and converting it run on other cores than the writing.
    For sources whose pass runs no TensorFlow (``StreamingSource.fork_safe``): forking
    after TensorFlow has started its threads is safe for code that does not use it. The
    counts a pass gathers as it goes come back into ``info`` at its end."""
    context = multiprocessing.get_context("fork")

    def produce(factory, queue):
        try:
            for part in convert(factory()):
                queue.put(("part", part))
            queue.put(("done", info))
        except BaseException as err:  # pylint: disable=broad-except  # re-raised there
            queue.put(("error", err))

    children = []
    for factory in factories:
        queue = context.Queue(maxsize=8)
        child = context.Process(target=produce, args=(factory, queue), daemon=True)
        child.start()
        children.append((child, queue))
    try:
        active = list(children)
        while active:
            for child, queue in list(active):
                while True:
                    try:
                        kind, payload = queue.get(timeout=5)
                        break
                    except queue_lib.Empty:
                        if not child.is_alive():
                            raise RuntimeError(f"a process reading the data source died "
                                               f"(exit {child.exitcode})") from None
                if kind == "part":
                    yield payload
                elif kind == "done":
                    info.update(payload)
                    active.remove((child, queue))
                else:
                    raise payload
    finally:
        for child, _ in children:
            if child.is_alive():
                child.terminate()
            child.join()


def prepare(cfg: config_lib.ExperimentConfig, out_dir: str) -> dict:
    """Writes ``out_dir`` (see the module docstring) and returns its manifest. A directory
    already prepared from the same data config is returned as is; one prepared from
    another, or a non-empty directory without a manifest, is refused before writing."""
    manifest = read_manifest(out_dir)
    if manifest is not None:
        check_manifest(cfg, manifest, out_dir)
        return manifest
    if tf.io.gfile.exists(out_dir) and tf.io.gfile.listdir(out_dir):
        raise DataError(f"{out_dir}: not empty and holds no {MANIFEST}; prepare into a new "
                        "or empty directory")
    started = time.time()
    source = sources.stream(cfg.data, os.path.join(out_dir, "data"))
    catalogue = source.catalogue
    items = {item: i + 1 for i, item in enumerate(sorted(catalogue))}
    counts = {split: {"examples": 0, "positives": 0} for split in canonical.SPLITS}
    train_users = _SortedStrings()
    trained_items, queries = set(), set()
    with atomic_directory(out_dir) as tmp:
        writers = {split: input_pipeline.ShardWriter(tmp, split, cfg.data.examples_per_shard)
                   for split in canonical.SPLITS}
        held = {"validation": [], "test": []}
        item_counts = np.zeros(len(items) + 1, np.int64)
        groups = {split: 0 for split in canonical.SPLITS}

        def convert(examples):
            return _parts(examples, catalogue, cfg, items)
        try:
            if not source.fork_safe:
                parts = convert(source.examples())
            else:
                factories = (source.parts(PARALLEL_READERS) if source.parts is not None
                             else [source.examples])
                parts = _parts_from_children(factories, convert, source.info)
            for part in parts:
                table = part.table
                table.group += groups[part.split]
                groups[part.split] = int(table.group.max()) + 1
                writers[part.split].write(table)
                positives = table.positive_item_indices()
                counts[part.split]["examples"] += len(table)
                counts[part.split]["positives"] += len(positives)
                if part.split == "train":
                    train_users.add(part.train_users)
                    trained_items |= part.trained_items
                    queries |= part.queries
                    item_counts += np.bincount(positives, minlength=len(item_counts))
                else:
                    held[part.split].extend(part.held)
            shards = {split: [os.path.basename(p) for p in writer.close()]
                      for split, writer in writers.items()}
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        for split in ("train", "validation"):
            if not counts[split]["examples"]:
                raise DataError(f"the {split} split is empty; check the data's split column "
                                "or data.validation_fraction")
        texts = [item.text(cfg.data.item_text_fields) for item in catalogue.values()]
        vocabulary = input_pipeline.learn_vocabulary(texts + sorted(queries),
                                                     cfg.data.vocab_size, cfg.data.lowercase)
        for split, rows in held.items():
            canonical.write_examples(os.path.join(tmp, f"{split}.jsonl"), rows)
        canonical.write_catalogue(os.path.join(tmp, "catalogue.jsonl"), catalogue)
        atomic_write_text(os.path.join(tmp, "vocab.txt"), "\n".join(vocabulary) + "\n")
        _write_ids(os.path.join(tmp, "ids.json"), train_users,
                   sorted(i for i in trained_items if i in catalogue))
        with tf.io.gfile.GFile(os.path.join(tmp, "item_counts.npy"), "wb") as f:
            np.save(f, item_counts)
        seconds = time.time() - started
        total = sum(c["examples"] for c in counts.values())
        manifest = {
            "format": FORMAT, "data": data_fingerprint(cfg), "source": source.info,
            "held_in_memory": source.held, "counts": counts, "groups": groups,
            "shards": shards, "vocab_sha256": _vocab_digest(vocabulary),
            "users": len(train_users), "items": len(items), "seconds": round(seconds, 1),
            "examples_per_second": round(total / max(seconds, 1e-9), 1)}
        write_json(os.path.join(tmp, MANIFEST), manifest)  # last: marks it complete
    log.info("prepared %d examples into %s in %.0f s (%.0f examples/s)", total, out_dir,
             seconds, total / max(seconds, 1e-9))
    return manifest


@dataclasses.dataclass
class Prepared:
    """A prepared directory read back: what ``trainer.data.prepared.PreparedData`` is built from."""

    manifest: dict
    catalogue: canonical.Catalogue
    ids: input_pipeline.IdVocabulary
    vocabulary: list
    train: input_pipeline.StreamingTable
    splits: dict  # validation/test -> [Example]; train -> [] (it streams)


def load(cfg: config_lib.ExperimentConfig, directory: str) -> Prepared:
    """Reads a prepared directory for ``cfg`` (refusing one prepared from another data
    config, or whose vocabulary file is not the one it was prepared with)."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise DataError(f"{directory}: no {MANIFEST}; run python -m trainer.task prepare "
                        f"--config C --out {directory} first")
    check_manifest(cfg, manifest, directory)
    catalogue = canonical.read_catalogue(os.path.join(directory, "catalogue.jsonl"))
    with tf.io.gfile.GFile(os.path.join(directory, "vocab.txt")) as f:
        vocabulary = f.read().splitlines()
    if _vocab_digest(vocabulary) != manifest["vocab_sha256"]:
        raise DataError(f"{directory}/vocab.txt is not the vocabulary this directory was "
                        "prepared with (its SHA-256 differs from manifest.json); prepare the "
                        "data again")
    with tf.io.gfile.GFile(os.path.join(directory, "ids.json")) as f:
        id_lists = json.load(f)
    train_users = id_lists["train_users"]  # sorted, as IdVocabulary.build gives them
    ids = input_pipeline.IdVocabulary(
        users={u: i + 1 for i, u in enumerate(train_users)},
        items={item: i + 1 for i, item in enumerate(sorted(catalogue))},
        trained_items=frozenset(id_lists["trained_items"]))
    with tf.io.gfile.GFile(os.path.join(directory, "item_counts.npy"), "rb") as f:
        item_counts = np.load(f)
    train = input_pipeline.StreamingTable(
        paths=[os.path.join(directory, name) for name in manifest["shards"]["train"]],
        rows=manifest["counts"]["train"]["examples"],
        positives=manifest["counts"]["train"]["positives"], item_counts=item_counts,
        users=train_users)
    splits = {"train": []}
    for split in ("validation", "test"):
        splits[split] = canonical.read_examples(os.path.join(directory, f"{split}.jsonl"),
                                                catalogue)
    return Prepared(manifest, catalogue, ids, vocabulary, train, splits)
