"""One run contract: what a run directory holds, and the one way to open a finished run.

``python -m trainer.task train`` writes a run directory (``--model_dir``, local or
``gs://``); every command and benchmark that reads one opens it with :func:`open_run`::

    config.yaml       the resolved config (written before training starts)
    data_info.json    counts and anything skipped by the data source
    vocab.txt         the WordPiece vocabulary (text kinds from random init)
    featurizer.json   what the kind's featurizer needs beyond the config and vocabulary
                      (the two-tower item table, the glass box's words; ModelKind.
                      featurizer_state), so opening a run does not read the data again
    catalogue.json    the catalogue: item id -> text fields and provider (titles for
                      explanations, the reranker's item texts)
    tensorboard/      train/ and validation/ event files, the projector, PR curves
    checkpoints/      best.weights.h5 (best validation train.early_stopping_metric)
    backup/           the resumable training state while training runs (trainer/training/
                      resume.py): a killed job rerun with the same command ends the same
    .lock             held (flock) while a run writes the directory
    model.keras       the trained Keras model (loads with keras.models.load_model)
    item_index/       retrieving kinds: every catalogue item's vector (trainer/kinds/
                      item_index.py)
    export/           SavedModel: raw strings in, click_probability out (trainer/serving/
                      export.py)
    export_tokens/    text kinds: the same model over token ids, no tf-text op in the graph
    metrics.json      {"validation": {...}, "test": {...}} (trainer/evaluation/metrics.py)
    *.png             calibration curve and score histogram of the final model
    manifest.json     written last: the run format and each artefact's size and sha256

Later commands add their own outputs beside these (``explanations/``, ``audit/``,
``distill_report.json``); the manifest covers what training wrote.

Run directories are copied between machines and buckets. :func:`open_run` checks the
manifest before it reads anything: a missing, truncated or altered artefact, or a run
written by an incompatible format, is a :class:`~trainer.errors.RunDirError` naming the
file and what to do (the command line exits with status 2).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os

import keras
import tensorflow as tf
import yaml

from trainer import config as config_lib
from trainer import kinds
from trainer.data import prepared as prepared_lib
from trainer.data.canonical import Catalogue, Item
from trainer.data.input_pipeline import IdVocabulary
from trainer.errors import ConfigError, RunDirError
from trainer.io import write_json
from trainer.kinds.item_index import ITEM_INDEX_DIR, ItemIndex

#: The version of this layout; a run of another format is refused with a clear error.
RUN_FORMAT = 1
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
MODEL = "model.keras"
VOCABULARY = "vocab.txt"
FEATURIZER = "featurizer.json"
CATALOGUE = "catalogue.json"
METRICS = "metrics.json"
#: The served SavedModels: raw strings in, and (text kinds) token ids in.
EXPORT_DIRS = ("export", "export_tokens")
#: What the manifest covers: files, or directories whose files it lists one by one.
ARTEFACTS = (CONFIG, "data_info.json", VOCABULARY, FEATURIZER, CATALOGUE, MODEL,
             ITEM_INDEX_DIR, *EXPORT_DIRS, METRICS)
_RETRAIN = ("retrain it (the same train command resumes or rewrites it), or copy the "
            "whole run directory again")


# ---------------------------------------------------------------------------------------
# Writing (train_lib)
# ---------------------------------------------------------------------------------------

def write_inputs(model_dir: str, kind, featurizer, catalogue: Catalogue) -> None:
    """``featurizer.json`` (when the kind has a state to save) and ``catalogue.json``,
    each written atomically."""
    state = kind.featurizer_state(featurizer)
    if state is not None:
        write_json(os.path.join(model_dir, FEATURIZER), state, sort_keys=False)
    write_json(os.path.join(model_dir, CATALOGUE),
               {item_id: {"fields": item.fields, "provider": item.provider}
                for item_id, item in sorted(catalogue.items())}, sort_keys=False)


def _files(model_dir: str) -> list:
    """The artefacts' files present in ``model_dir``, as sorted relative paths."""
    found = []
    for name in ARTEFACTS:
        path = os.path.join(model_dir, name)
        if tf.io.gfile.isdir(path):
            for root, _, files in tf.io.gfile.walk(path):
                found += [os.path.relpath(os.path.join(root, f), model_dir) for f in files]
        elif tf.io.gfile.exists(path):
            found.append(name)
    return sorted(found)


def _digest(path: str) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def write_manifest(model_dir: str) -> dict:
    """Records the run format and every artefact's size and sha256 in ``manifest.json``,
    atomically; called last, once everything it lists is written."""
    files = {}
    for name in _files(model_dir):
        size, sha = _digest(os.path.join(model_dir, name))
        files[name] = {"bytes": size, "sha256": sha}
    manifest = {"format": RUN_FORMAT, "files": files}
    write_json(os.path.join(model_dir, MANIFEST), manifest)
    return manifest


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

def _require_config(model_dir: str) -> str:
    path = os.path.join(model_dir, CONFIG)
    if not tf.io.gfile.exists(path):
        raise RunDirError(f"{path}: not found; --model_dir must be a directory written by "
                          "`train`")
    return path


def read_config(model_dir: str) -> config_lib.ExperimentConfig:
    """The resolved config of the run at ``model_dir`` (a RunDirError naming the file when
    there is none or it does not parse)."""
    path = _require_config(model_dir)
    try:
        with tf.io.gfile.GFile(path) as f:
            raw = yaml.safe_load(f.read())
        if not isinstance(raw, dict):
            raise ConfigError("not a mapping of config keys")
        return config_lib.config_from_dict(raw)
    except (yaml.YAMLError, ConfigError) as err:
        raise RunDirError(f"{path}: not a readable run config ({err}); {_RETRAIN}") from None


def verify(model_dir: str) -> dict:
    """The run's manifest, after checking that every file it lists is there, whole and
    unchanged (size and sha256); a RunDirError naming the first file that is not."""
    _require_config(model_dir)
    path = os.path.join(model_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise RunDirError(
            f"{path}: not found: the run did not finish training, or it was written before "
            f"run format {RUN_FORMAT} (which added the manifest); {_RETRAIN}")
    try:
        with tf.io.gfile.GFile(path) as f:
            manifest = json.loads(f.read())
        files = manifest["files"]
        run_format = manifest["format"]
    except (ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{path}: damaged ({type(err).__name__}: {err}); "
                          f"{_RETRAIN}") from None
    if run_format != RUN_FORMAT:
        raise RunDirError(f"{path}: run format {run_format!r}; this version reads format "
                          f"{RUN_FORMAT}: open it with the version that wrote it, or retrain")
    for name, expected in sorted(files.items()):
        file_path = os.path.join(model_dir, name)
        if not tf.io.gfile.exists(file_path):
            raise RunDirError(f"{file_path}: missing (the run's manifest lists it); "
                              f"{_RETRAIN}")
        size, sha = _digest(file_path)
        if size != expected["bytes"]:
            raise RunDirError(f"{file_path}: {size} bytes, the manifest records "
                              f"{expected['bytes']}: the file was cut short or replaced "
                              f"(an interrupted copy?); {_RETRAIN}")
        if sha != expected["sha256"]:
            raise RunDirError(f"{file_path}: its content differs from what training wrote "
                              f"(sha256 mismatch): damaged in a copy or edited; {_RETRAIN}")
    return manifest


@dataclasses.dataclass
class Run:
    """A finished run, opened by :func:`open_run`: its config and kind now; the model,
    featurizer, item index and catalogue when first asked for; the data (which reads the
    data source again) only through :meth:`prepared`."""

    model_dir: str
    cfg: config_lib.ExperimentConfig
    kind: object  # trainer.kinds.base.ModelKind
    manifest: dict
    source_dir: str = ""  # where model.keras and item_index/ are read (default model_dir)

    def _path(self, name: str, source: bool = False) -> str:
        return os.path.join(self.source_dir if source and self.source_dir else
                            self.model_dir, name)

    @functools.cached_property
    def model(self) -> keras.Model:
        """The trained model (``model.keras``), without its training state: scoring,
        explaining and exporting a finished run need no optimizer (whose learning-rate
        schedule belongs to the training library)."""
        return keras.models.load_model(self._path(MODEL, source=True), compile=False)

    @functools.cached_property
    def vocabulary(self) -> str | None:
        """The run's ``vocab.txt`` path (text kinds from random init), else None."""
        return self._path(VOCABULARY) if self.kind.learns_vocabulary(self.cfg) else None

    @functools.cached_property
    def featurizer(self):
        """The kind's featurizer as training built it, from the run's files alone."""
        state = None
        if tf.io.gfile.exists(self._path(FEATURIZER)):
            with tf.io.gfile.GFile(self._path(FEATURIZER)) as f:
                state = json.loads(f.read())
        return self.kind.load_featurizer(self.cfg, self.vocabulary, state)

    @functools.cached_property
    def item_index(self) -> ItemIndex | None:
        """The cached item vectors of a retrieving kind, else None."""
        return ItemIndex.load(self.source_dir or self.model_dir) if self.kind.retrieves \
            else None

    @functools.cached_property
    def catalogue(self) -> Catalogue:
        """Item id -> :class:`~trainer.data.canonical.Item`, as training read it."""
        with tf.io.gfile.GFile(self._path(CATALOGUE)) as f:
            raw = json.loads(f.read())
        return Catalogue({item_id: Item(item_id, entry["fields"], entry["provider"])
                          for item_id, entry in raw.items()})

    @functools.cached_property
    def ids(self) -> IdVocabulary:
        """The catalogue's item indices (``IdVocabulary.items``; no users: a run serves
        users by their history, not their id)."""
        return IdVocabulary(users={}, items={item: i + 1
                                             for i, item in enumerate(sorted(self.catalogue))})

    def prepared(self) -> prepared_lib.PreparedData:
        """The run's data, read from its source again and prepared as training did (the
        vocabulary is the run's own, not learned again): for commands that need the
        examples (evaluate, explain, audit, distill)."""
        data = prepared_lib.prepare_data(self.cfg, self.model_dir, learn_vocabulary=False)
        if self.vocabulary is not None:
            with tf.io.gfile.GFile(self.vocabulary) as f:
                data.vocabulary = f.read().splitlines()
        return data


def open_run(model_dir: str) -> Run:
    """The finished run at ``model_dir``, checked against its manifest (see the module
    docstring); RunDirError naming the file otherwise."""
    manifest = verify(model_dir)
    cfg = read_config(model_dir)
    return Run(model_dir, cfg, kinds.for_config(cfg), manifest)


def open_staged_run(model_dir: str, source_dir: str) -> Run:
    """A run that training is still writing: its config from ``model_dir``, its model and
    item index from ``source_dir`` (the staging directory a JAX run exports from). No
    manifest yet: training writes it last."""
    cfg = read_config(model_dir)
    if not tf.io.gfile.exists(os.path.join(source_dir, MODEL)):
        raise RunDirError(f"{os.path.join(source_dir, MODEL)}: not found; the run did not "
                          "finish training")
    return Run(model_dir, cfg, kinds.for_config(cfg), {}, source_dir=source_dir)


def mark_unfinished(model_dir: str) -> None:
    """Removes the manifest before a run's artefacts are rewritten: a crash in between
    leaves a run that says it is unfinished rather than one whose manifest lies."""
    path = os.path.join(model_dir, MANIFEST)
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def write_manifest_after(model_dir: str, write) -> None:
    """Runs ``write()`` (which rewrites artefacts of a finished run, e.g. ``export``)
    between :func:`mark_unfinished` and a new manifest."""
    mark_unfinished(model_dir)
    write()
    write_manifest(model_dir)

