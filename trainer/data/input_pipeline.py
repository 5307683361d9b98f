"""Canonical examples -> tf.data datasets of int/float tensors, tokenized in the graph.

The flow is::

    [Example] + Catalogue --make_pair_table--> PairTable (strings, labels, ids; columnar)
        --(optional) ShardWriter--> TFRecord shards (trainer/data/prepare.py: data that does not fit)
        --make_dataset--> tf.data: shuffle -> batch -> TextPairPacker (tokenize + pack) -> prefetch

The user side of each pair is the query (if any) followed by the most recent history titles,
most recent first, so deterministic end-truncation drops the oldest history first; the item
side is the candidate's configured text fields. Only int/float tensors reach the model: a
bool or string tensor in the input dict breaks tf.distribute under Keras 3 (docs/design.md).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import uuid

import keras_hub
import numpy as np
import tensorflow as tf

from trainer.data.canonical import Catalogue, Example

log = logging.getLogger(__name__)

USER_SIDE_SEPARATOR = " ; "
RESERVED_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # [PAD] = 0: the model's mask


def user_side_text(query: str, history_titles: list[str], max_history: int) -> str:
    """The user side of a pair: ``query ; newest title ; ... ; oldest kept title``.

    ``history_titles`` is oldest first (as stored); the ``max_history`` most recent are kept.
    """
    recent = list(history_titles)[-max_history:] if max_history > 0 else []
    parts = ([query.strip()] if query and query.strip() else []) + recent[::-1]
    return USER_SIDE_SEPARATOR.join(parts)


@dataclasses.dataclass
class IdVocabulary:
    """Integer indices for user and item ids (0 = unknown).

    ``items`` covers the whole catalogue (sorted ids -> 1..N): it indexes the item-text
    table too. ``trained_items`` holds the items that training saw (as a candidate or in
    a history): only those have learned id embeddings in a hybrid model; the others are
    cold-start items, scored from their text.
    """

    users: dict
    items: dict
    trained_items: frozenset = frozenset()

    @classmethod
    def build(cls, train_examples: list[Example], catalogue: Catalogue) -> "IdVocabulary":
        users = sorted({ex.user_id for ex in train_examples})
        seen = {ex.candidate for ex in train_examples}
        for ex in train_examples:
            seen.update(ex.history)
        return cls(users={u: i + 1 for i, u in enumerate(users)},
                   items={item: i + 1 for i, item in enumerate(sorted(catalogue))},
                   trained_items=frozenset(item for item in seen if item in catalogue))

    def item_id_list(self) -> list:
        """Catalogue item ids in index order, entry 0 = "" (no item)."""
        return [""] + sorted(self.items, key=self.items.get)

    def item_texts(self, catalogue: Catalogue, item_text_fields: list) -> list:
        """Every item's text (``Item.text(item_text_fields)``) in index order, entry 0 =
        "": what a candidate's ``item_index`` reads its text from."""
        return [""] + [catalogue[item].text(item_text_fields)
                       for item in self.item_id_list()[1:]]

    def trained_item_mask(self) -> np.ndarray:
        """bool ``[len(items) + 1]``: True at the index of every item training saw."""
        mask = np.zeros(len(self.items) + 1, dtype=bool)
        mask[[self.items[item] for item in self.trained_items]] = True
        return mask


@dataclasses.dataclass
class PairTable:
    """One row per example, columnar; what the tf.data pipeline is built from."""

    user_text: np.ndarray  # object (str)
    item_text: np.ndarray  # object (str)
    label: np.ndarray  # float32
    group: np.ndarray  # int64: impression index, for per-impression ranking metrics
    user_index: np.ndarray  # int32
    item_index: np.ndarray  # int32: the candidate's IdVocabulary.items index
    query: np.ndarray | None = None  # object (str, "" = none)
    # int32 [rows, max_history]: the history's IdVocabulary.items indices, most recent
    # first, 0-padded (what the two-tower model reads instead of user_text)
    history_index: np.ndarray | None = None
    true_probability: np.ndarray | None = None  # float32, synthetic data only
    # Distillation (trainer/training/distill_lib.py): the teacher's logit on each row, and 1 for a
    # logged impression / 0 for an unlabelled catalogue pair (whose label is a placeholder)
    teacher_logit: np.ndarray | None = None  # float32
    labelled: np.ndarray | None = None  # float32
    # object (str): the raw user id, written into TFRecord shards by trainer/data/prepare.py,
    # which cannot number users before it has seen them all; the input pipeline turns it
    # into user_index (StreamingTable.users)
    user_id: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    def columns(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def positive_rows(self) -> "PairTable":
        """The clicked rows (what an in-batch softmax trains on)."""
        return self.subset(self.label > 0)

    def positive_item_indices(self) -> np.ndarray:
        """The candidate ``item_index`` of every clicked row (popularity counts)."""
        return self.item_index[self.label > 0]

    def label_counts(self) -> tuple[int, int]:
        """``(rows, clicked rows)``."""
        return len(self), int((self.label > 0.5).sum())

    def subset(self, rows) -> "PairTable":
        """The table restricted to ``rows`` (indices or a bool mask), columns aligned."""
        return PairTable(**{k: (v[rows] if v is not None else None)
                            for k, v in dataclasses.asdict(self).items()})

    @classmethod
    def concat(cls, tables: list) -> "PairTable":
        """The rows of ``tables`` one after another; a column absent from any table is
        dropped."""
        columns = {}
        for field in dataclasses.fields(cls):
            values = [getattr(t, field.name) for t in tables]
            columns[field.name] = (None if any(v is None for v in values)
                                   else np.concatenate(values))
        return cls(**columns)


@dataclasses.dataclass
class StreamingTable:
    """A split kept in TFRecord shards (``python -m trainer.task prepare``): what training
    needs of a :class:`PairTable` (its size, click counts, the stream) without its rows.

    ``item_counts[i]`` is the number of clicked rows whose candidate has ``item_index`` i.
    ``positives_only`` streams the clicked rows alone (in-batch softmax)."""

    paths: list
    rows: int
    positives: int
    item_counts: np.ndarray
    # The sorted training user ids (IdVocabulary.users order): a row's user_index is the
    # 1-based position of its user_id here, 0 for a user training never saw.
    users: list | None = None
    positives_only: bool = False
    teacher_logit = None  # never distilled: distillation keeps its table in memory

    def __len__(self) -> int:
        return self.positives if self.positives_only else self.rows

    def positive_rows(self) -> "StreamingTable":
        return dataclasses.replace(self, positives_only=True)

    def positive_item_indices(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.item_counts), dtype=np.int32), self.item_counts)

    def label_counts(self) -> tuple[int, int]:
        return self.rows, self.positives


def make_pair_table(examples: list[Example], catalogue: Catalogue, item_text_fields: list,
                    max_history: int, ids: IdVocabulary) -> PairTable:
    """Builds the text pairs and id columns for ``examples``."""
    item_text_cache = {}
    title_cache = {}

    def item_text(item_id):
        if item_id not in item_text_cache:
            item_text_cache[item_id] = catalogue[item_id].text(item_text_fields)
        return item_text_cache[item_id]

    def title(item_id):
        if item_id not in title_cache:
            title_cache[item_id] = catalogue[item_id].title
        return title_cache[item_id]

    groups: dict = {}
    has_truth = bool(examples) and all("true_probability" in ex.extras for ex in examples)
    table = PairTable(
        user_text=np.array([user_side_text(ex.query, [title(h) for h in
                                                      ex.history[-max_history:]], max_history)
                            for ex in examples], dtype=object),
        item_text=np.array([item_text(ex.candidate) for ex in examples], dtype=object),
        label=np.array([ex.label for ex in examples], dtype=np.float32),
        group=np.array([groups.setdefault(ex.impression_id, len(groups)) for ex in examples],
                       dtype=np.int64),
        user_index=np.array([ids.users.get(ex.user_id, 0) for ex in examples], dtype=np.int32),
        item_index=np.array([ids.items.get(ex.candidate, 0) for ex in examples],
                            dtype=np.int32),
        query=np.array([ex.query or "" for ex in examples], dtype=object),
        history_index=history_indices(examples, ids.items, max_history),
        true_probability=(np.array([float(ex.extras["true_probability"]) for ex in examples],
                                   dtype=np.float32) if has_truth else None))
    return table


def history_indices(examples: list[Example], item_index: dict, max_history: int) -> np.ndarray:
    """int32 ``[len(examples), max_history]``: each history's most recent items, most
    recent first, as ``item_index`` indices (0 = padding or an item not in the index)."""
    out = np.zeros((len(examples), max(max_history, 0)), dtype=np.int32)
    if max_history <= 0:
        return out
    for row, ex in enumerate(examples):
        recent = [item_index.get(h, 0) for h in list(ex.history)[-max_history:]][::-1]
        out[row, :len(recent)] = recent
    return out


def learn_vocabulary(texts: list[str], vocabulary_size: int, lowercase: bool) -> list[str]:
    """A WordPiece vocabulary learned from ``texts`` (for randomly initialised models)."""
    data = tf.data.Dataset.from_tensor_slices(np.array(texts, dtype=object)).batch(1024)
    return keras_hub.tokenizers.compute_word_piece_vocabulary(
        data, vocabulary_size=vocabulary_size, lowercase=lowercase,
        # The separator joins the query and titles on the user side; item texts rarely
        # contain it, so reserve it: otherwise it would tokenize to [UNK].
        reserved_tokens=RESERVED_TOKENS + [USER_SIDE_SEPARATOR.strip()])


def make_tokenizer(vocabulary=None, lowercase: bool = True, pretrained: str = ""):
    """A keras-hub BertTokenizer: from a pretrained preset/directory, else from a vocabulary
    (a list of tokens or a vocab.txt path)."""
    if pretrained:
        return keras_hub.tokenizers.BertTokenizer.from_preset(pretrained)
    if isinstance(vocabulary, str) and "://" in vocabulary:
        # keras-hub opens a vocabulary path with open(); read gs:// (and other TF file
        # systems) here and hand it the tokens.
        with tf.io.gfile.GFile(vocabulary) as f:
            vocabulary = f.read().splitlines()
    return keras_hub.tokenizers.BertTokenizer(vocabulary=vocabulary, lowercase=lowercase)


# ---------------------------------------------------------------------------------------
# TFRecord shards: for data that does not fit in memory, and for gs:// pipelines.
# ---------------------------------------------------------------------------------------

# Each record holds a block of up to RECORD_ROWS rows, column by column (one tf.train.Example
# whose features are lists): building, writing and parsing one proto per row cost ~20 us of
# Python each, which capped conversion far below the rate a large dataset needs.
RECORD_ROWS = 1024
_STRING_COLUMNS = ("query", "user_text", "item_text", "user_id")
_FLOAT_COLUMNS = ("label", "true_probability")
_INT_COLUMNS = ("group", "user_index", "item_index")


def _block_features(max_history: int) -> dict:
    spec = {name: tf.io.FixedLenSequenceFeature([], dtype, allow_missing=True)
            for names, dtype in ((_STRING_COLUMNS, tf.string), (_FLOAT_COLUMNS, tf.float32),
                                 (_INT_COLUMNS, tf.int64)) for name in names}
    if max_history:
        spec["history_index"] = tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)
    return spec


def _block_record(table: PairTable, start: int, stop: int) -> bytes:
    """Rows ``[start, stop)`` of ``table`` as one serialized tf.train.Example of lists."""
    def column(name):
        values = getattr(table, name)
        return None if values is None else values[start:stop]

    feature = {}
    for name in _STRING_COLUMNS:
        values = column(name)
        if values is None:
            values = [""] * (stop - start)
        feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[str(v).encode("utf-8") for v in values]))
    for name in _FLOAT_COLUMNS:
        values = column(name)
        values = np.full(stop - start, -1.0, np.float32) if values is None else values
        feature[name] = tf.train.Feature(float_list=tf.train.FloatList(
            value=np.asarray(values, np.float32).tolist()))
    for name in _INT_COLUMNS:
        feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(
            value=np.asarray(column(name), np.int64).tolist()))
    if table.history_index is not None:
        feature["history_index"] = tf.train.Feature(int64_list=tf.train.Int64List(
            value=np.asarray(column("history_index"), np.int64).reshape(-1).tolist()))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class ShardWriter:
    """Appends :class:`PairTable` chunks to ``<directory>/<prefix>-NNNNN.tfrecord`` shards of
    ``examples_per_shard`` rows (the last may be shorter), so data of any size is written
    with one chunk in memory.

    Each shard is written under a temporary name and renamed when complete, so a crash
    leaves no partial shard; works on any ``tf.io.gfile`` path (``gs://`` included).
    ``close()`` returns the shard paths in order.
    """

    def __init__(self, directory: str, prefix: str, examples_per_shard: int = 50000):
        if examples_per_shard < 1:
            raise ValueError("examples_per_shard must be >= 1")
        self.directory, self.prefix = directory, prefix
        self.examples_per_shard = examples_per_shard
        self.paths: list[str] = []
        self.rows = 0
        self._writer = self._tmp = None
        self._in_shard = 0
        tf.io.gfile.makedirs(directory)

    def write(self, table: PairTable) -> None:
        start = 0
        while start < len(table):
            if self._writer is None:
                path = os.path.join(self.directory,
                                    f"{self.prefix}-{len(self.paths):05d}.tfrecord")
                self._tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
                self._writer = tf.io.TFRecordWriter(self._tmp)
                self.paths.append(path)
                self._in_shard = 0
            stop = min(len(table), start + RECORD_ROWS,
                       start + self.examples_per_shard - self._in_shard)
            self._writer.write(_block_record(table, start, stop))
            self._in_shard += stop - start
            self.rows += stop - start
            start = stop
            if self._in_shard == self.examples_per_shard:
                self._finish_shard()

    def _finish_shard(self) -> None:
        self._writer.close()
        tf.io.gfile.rename(self._tmp, self.paths[-1], overwrite=True)
        self._writer = self._tmp = None

    def close(self) -> list[str]:
        if self._writer is not None:
            self._finish_shard()
        return list(self.paths)

    def abort(self) -> None:
        """Removes the shard being written (on failure)."""
        if self._writer is not None:
            self._writer.close()
            if tf.io.gfile.exists(self._tmp):
                tf.io.gfile.remove(self._tmp)
            self._writer = self._tmp = None


def write_tfrecords(table: PairTable, directory: str, prefix: str,
                    examples_per_shard: int = 50000) -> list[str]:
    """Writes ``table`` as ``<directory>/<prefix>-NNNNN.tfrecord`` shards (:class:`ShardWriter`)."""
    writer = ShardWriter(directory, prefix, examples_per_shard)
    try:
        writer.write(table)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def read_tfrecords(pattern_or_paths, ordered: bool = True,
                   max_history: int = 0) -> tf.data.Dataset:
    """A dataset of column dicts (like ``PairTable.columns()`` rows) from TFRecord shards.

    ``ordered`` reads shards one after another (rows in written order, as evaluation needs);
    otherwise shards are interleaved in parallel (training, where order does not matter).
    ``max_history`` > 0 also reads the ``history_index`` column of that width.
    """
    paths = (tf.io.gfile.glob(pattern_or_paths) if isinstance(pattern_or_paths, str)
             else list(pattern_or_paths))
    if not paths:
        raise FileNotFoundError(f"no TFRecord shards match {pattern_or_paths!r}")
    files = tf.data.Dataset.from_tensor_slices(sorted(paths))
    if ordered:
        records = files.flat_map(tf.data.TFRecordDataset)
    else:
        records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(paths)),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    spec = _block_features(max_history)

    def parse(record):
        block = tf.io.parse_single_example(record, spec)
        if max_history:
            block["history_index"] = tf.reshape(block["history_index"], [-1, max_history])
        return block

    blocks = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                         deterministic=ordered)
    return blocks.unbatch()


def _user_index_lookup(users: list):
    """A row map setting ``user_index`` from ``user_id``: its 1-based position in
    ``users``, 0 for a user not in it."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(users) or [""], tf.string),
            tf.range(1, max(len(users), 1) + 1, dtype=tf.int64) if users
            else tf.constant([0], tf.int64)),
        default_value=0)

    def lookup(row):
        return {**row, "user_index": table.lookup(row["user_id"])}
    return lookup


PACK_BLOCK = 512  # rows tokenized per call: the tokenizer's per-call cost is high


MAX_SEEDED_PASSES = 512  # one concatenated dataset per pass over the training table


def _seeded_passes(data: tf.data.Dataset, seed: int, shuffle_buffer: int,
                   passes: range) -> tf.data.Dataset:
    """Passes ``passes`` over ``data``, each shuffled with its own seed drawn from
    ``(seed, pass)``, concatenated.

    ``shuffle(reshuffle_each_iteration=True).repeat()`` would draw each pass's order from a
    seed generator whose state is shared by every iterator over the dataset; a distribution
    strategy creates more than one (measured under MirroredStrategy: a resumed run's stream
    was shifted by a whole pass), so the order would depend on the iterator history and not
    only on the position in the stream. Here pass k's order depends on (seed, k) alone.
    """
    shuffled = [data.shuffle(shuffle_buffer,
                             seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]),
                             reshuffle_each_iteration=False)
                for k in passes]
    return functools.reduce(lambda a, b: a.concatenate(b), shuffled)


# A table's text columns: a featurizer names those it reads (``text_columns``).
TEXT_COLUMNS = ("user_text", "item_text", "query", "user_id")


def model_inputs(batch: dict, packer) -> tuple:
    """``(features, label)`` of a batch of table columns, inside tf.data: the id features,
    whatever the model kind's featurizer ``packer`` adds (see :func:`make_dataset`), and
    the label (for distillation, ``[label, teacher_logit, labelled]``)."""
    features = {"user_index": tf.cast(batch["user_index"], tf.int32),
                "item_index": tf.cast(batch["item_index"], tf.int32)}
    if packer is not None:
        features.update(packer.features(batch))
    label = tf.cast(batch["label"], tf.float32)
    if "teacher_logit" in batch:
        # The distillation target: [label, teacher_logit, labelled] (models/distillation.py)
        label = tf.stack([label, tf.cast(batch["teacher_logit"], tf.float32),
                          tf.cast(batch["labelled"], tf.float32)], axis=-1)
    return features, label


def make_dataset(source, batch_size: int, packer=None, training: bool = False,
                 seed: int = 0, shuffle_buffer: int = 20000, repeat: bool = False,
                 with_labels: bool = True, cache_tokens: bool = False,
                 skip_rows: int = 0, total_rows: int | None = None,
                 positives_only: bool = False,
                 users: list | None = None) -> tf.data.Dataset:
    """Batched ``(features, label)`` pairs for ``model.fit`` / ``predict``.

    Rows are tokenized and packed in blocks of ``PACK_BLOCK`` (one tokenizer call per block
    instead of per batch), then re-batched.

    Args:
      source: a :class:`PairTable` or TFRecord shard paths/glob.
      packer: the model kind's featurizer (trainer/kinds/): its ``features(batch)`` maps
        the batch's table columns to the model's inputs (a cross-encoder's
        ``TextPairPacker`` packs ``user_text`` / ``item_text`` into ``token_ids`` and
        ``segment_ids``; a two-tower model's ``TwoTowerFeatures`` (trainer/kinds/two_tower.py) gathers item tokens and
        ids). Id features (``user_index``, ``item_index``) are always included; a
        featurizer may replace them.
      training: shuffle (seeded, reshuffled each epoch) and drop the last partial batch so
        every replica gets equal, static-shaped batches.
      cache_tokens: keep the packed int tensors in memory after the first pass, so later
        epochs do not tokenize again (about 1 KB per example at sequence length 128).
        Measured on 2 CPU cores with the tiny model: training went from 171 to 399 examples/s
        with pre-tokenized inputs, because tokenization competes with the train step for
        the same cores.
      skip_rows: rows of the shuffled (and repeated) stream to drop before batching: a
        resumed run continues the stream where the finished epochs left it.
      total_rows: with ``training`` and ``repeat`` on a :class:`PairTable`, the length of
        the whole training stream (epochs x steps x global batch). The stream is then a
        pure function of ``seed`` (see :func:`_seeded_passes`), which exact resume needs.
      positives_only: TFRecord sources: keep the clicked rows only (a table is filtered
        before, with :meth:`PairTable.positive_rows`).
      users: TFRecord sources: ``user_index`` becomes the 1-based position of the row's
        ``user_id`` in this sorted list, 0 if absent (:attr:`StreamingTable.users`).
    """
    if isinstance(source, PairTable):
        columns = source.columns()
        columns.pop("true_probability", None)
        # Only the text columns the featurizer reads: a user text is the joined history,
        # repeated on each of an impression's rows, and as one fixed-width array it can
        # outgrow memory (the sequential benchmarks: 844k rows of up to 9k characters).
        read = set(getattr(packer, "text_columns", TEXT_COLUMNS)) if packer else set()
        columns = {k: v for k, v in columns.items() if k not in TEXT_COLUMNS or k in read}
        data = tf.data.Dataset.from_tensor_slices(
            {k: (v.astype(str) if v.dtype == object else v) for k, v in columns.items()})
    else:
        data = read_tfrecords(source, ordered=not training,
                              max_history=getattr(packer, "max_history", 0))
        if positives_only:
            data = data.filter(lambda row: row["label"] > 0)
        if users is not None:
            data = data.map(_user_index_lookup(users), num_parallel_calls=tf.data.AUTOTUNE)

    data = data.batch(PACK_BLOCK).map(lambda batch: model_inputs(batch, packer),
                                      num_parallel_calls=tf.data.AUTOTUNE)
    data = data.unbatch()
    if isinstance(source, PairTable):
        # unbatch() hides the row count; without it Keras cannot size predict/evaluate
        # passes and warns "Your input ran out of data" at the end of each one.
        data = data.apply(tf.data.experimental.assert_cardinality(len(source)))
    if cache_tokens:
        data = data.cache()
    passes = None
    if training and repeat and total_rows and isinstance(source, PairTable) and len(source):
        # One pass more than the steps need: Keras may read ahead of the last step (under
        # a distribution strategy it takes a batch to build the model), and running out
        # would end the last epoch early.
        passes = range(skip_rows // len(source), -(-total_rows // len(source)) + 1)
        if len(passes) > MAX_SEEDED_PASSES:
            log.warning("%d passes over %d training rows: too many to seed one by one, so "
                        "the shuffle order is not reproduced by a resumed run",
                        len(passes), len(source))
            passes = None
    if passes is not None:
        data = _seeded_passes(data, seed, shuffle_buffer, passes)
        skip_rows %= len(source)
    else:
        if training:
            data = data.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            data = data.repeat()
    if skip_rows:
        data = data.skip(skip_rows)
    data = data.batch(batch_size, drop_remainder=training)
    if not with_labels:
        data = data.map(lambda features, label: features)
    return data.prefetch(tf.data.AUTOTUNE)
