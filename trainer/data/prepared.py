"""A run's data, ready for the model: the pair tables of every split, the id vocabulary,
the catalogue and (for random-init text kinds) the WordPiece vocabulary learned from it.

Loaded through a data source (trainer/data/sources.py) or from prepared TFRecord shards
(trainer/data/prepare.py); every check that can reject the data runs here, before a run
directory is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from trainer import config as config_lib
from trainer.data import input_pipeline, sources
from trainer.data import prepare as prepare_lib
from trainer.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PreparedData:
    """Everything the model-facing steps need, built from a SplitData."""

    tables: dict  # split -> PairTable
    splits: dict  # split -> [Example], row-aligned with the tables
    info: dict
    ids: input_pipeline.IdVocabulary
    vocabulary: list | None  # learned WordPiece vocabulary (random-init text models)
    catalogue: dict | None = None  # item id -> Item (explanations need titles)


def prepare_data(cfg: config_lib.ExperimentConfig, model_dir: str,
                 learn_vocabulary: bool) -> PreparedData:
    """Loads and validates the data, builds pair tables and, with ``learn_vocabulary`` (a
    random-init text kind), a WordPiece vocabulary.

    Writes nothing into ``model_dir`` except, for the synthetic source, the generated data
    under ``data.data_dir`` (default ``<model_dir>/data``).
    """
    if cfg.data.tfrecord_dir:
        return _prepared_from_tfrecords(cfg, learn_vocabulary)
    data = sources.load(cfg.data, os.path.join(model_dir, "data"))
    ids = input_pipeline.IdVocabulary.build(data.splits["train"], data.catalogue)
    if cfg.train.privacy.enabled:
        # Which items training saw would leak through the id features' mask: all count.
        ids = dataclasses.replace(ids, trained_items=frozenset(data.catalogue))
    tables = {name: input_pipeline.make_pair_table(
        examples, data.catalogue, cfg.data.item_text_fields, cfg.data.max_history, ids)
        for name, examples in data.splits.items()}
    for name in ("train", "validation"):
        if len(tables[name]) == 0:
            raise DataError(f"the {name} split is empty; check the data's split "
                                     "column or data.validation_fraction")
    info = dict(data.info)
    info["warnings"] = check_labels(cfg, tables, info.get("impressions_file") or
                                    f"data.source={cfg.data.source}")
    vocabulary = None
    if learn_vocabulary:
        texts = [item.text(cfg.data.item_text_fields) for item in data.catalogue.values()]
        if not cfg.train.privacy.enabled:  # private: the users' queries stay out
            texts += sorted({ex.query for ex in data.splits["train"] if ex.query})
        vocabulary = input_pipeline.learn_vocabulary(
            texts, cfg.data.vocab_size, cfg.data.lowercase)
    info["pairs"] = {name: len(t) for name, t in tables.items()}
    return PreparedData(tables, data.splits, info, ids, vocabulary, data.catalogue)


def _prepared_from_tfrecords(cfg: config_lib.ExperimentConfig,
                             learn_vocabulary: bool) -> PreparedData:
    """:class:`PreparedData` over ``data.tfrecord_dir`` (trainer/data/prepare.py; prepared now
    if it holds nothing yet): the train split streams from its shards, the evaluation
    splits are tables in memory."""
    directory = cfg.data.tfrecord_dir
    if prepare_lib.read_manifest(directory) is None:
        prepare_lib.prepare(cfg, directory)
    prepared = prepare_lib.load(cfg, directory)
    tables = {"train": prepared.train}
    for name in ("validation", "test"):
        tables[name] = input_pipeline.make_pair_table(
            prepared.splits[name], prepared.catalogue, cfg.data.item_text_fields,
            cfg.data.max_history, prepared.ids)
    info = {"source": prepared.manifest["source"], "tfrecord_dir": directory,
            "examples": {k: v["examples"] for k, v in prepared.manifest["counts"].items()},
            "items": prepared.manifest["items"]}
    info["warnings"] = check_labels(cfg, tables, f"data.tfrecord_dir={directory}")
    info["pairs"] = {name: len(t) for name, t in tables.items()}
    vocabulary = prepared.vocabulary if learn_vocabulary else None
    return PreparedData(tables, prepared.splits, info, prepared.ids, vocabulary,
                        prepared.catalogue)


def check_labels(cfg: config_lib.ExperimentConfig, tables: dict, source: str) -> list:
    """Refuses a training split a click model cannot learn from (no click at all; or no
    non-click under the BCE loss, whose only negatives are the logged ones); returns
    warnings for evaluation splits with one label only (AUC is undefined there)."""
    rows, positives = tables["train"].label_counts()
    if not positives:
        raise DataError(f"{source}: the train split has no positive label (label=1) in its "
                        f"{rows} rows, so a model would learn a constant; check the "
                        "label column (1 = click) and the split column")
    if cfg.train.loss == "bce" and positives == rows:
        raise DataError(f"{source}: the train split has no negative label (label=0) in its "
                        f"{rows} rows, which train.loss=bce needs; add the non-clicked "
                        "candidates of each impression, or set train.loss=softmax (in-batch "
                        "negatives; two-tower models)")
    warnings = []
    for name in ("validation", "test"):
        labels = tables[name].label
        if len(labels) and len(np.unique(labels > 0.5)) == 1:
            only = int(labels[0] > 0.5)
            warnings.append(f"the {name} split has only label {only} ({len(labels)} rows): "
                            "its AUC is undefined (reported as nan)")
            log.warning("%s: %s", source, warnings[-1])
    return warnings
