"""Typed, strict experiment configuration.

A config is a tree of dataclasses grouped as ``data`` / ``model`` / ``train`` / ``runtime``.
It is read from YAML, may inherit from another YAML file through a top-level ``base:`` key
(a path relative to the file naming it), and is then overridden with dotted ``key=value``
pairs from the command line::

    cfg = load_config("configs/tiny.yaml", ["train.learning_rate=3e-5", "model.num_layers=1"])

Unknown keys and values of the wrong type raise :class:`ConfigError` naming the dotted key,
before anything is written anywhere. :func:`to_dict` gives the resolved config that
``train`` records as ``config.yaml`` in the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import posixpath
import typing
from typing import Any

import yaml

from trainer import kind_registry as kinds
from trainer.errors import ConfigError

# Where the repository's configs/ are installed with the package (setup.py package_data),
# and where they are in a source checkout (an editable install maps nothing there).
PACKAGED_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_CHECKOUT_CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "configs")


@dataclasses.dataclass
class SyntheticConfig:
    """Sizes of the synthetic catalogue/behaviour generator (see trainer/data/synthetic.py)."""

    num_items: int = 400
    num_users: int = 600
    impressions_per_user: int = 8
    candidates_per_impression: int = 5
    min_history: int = 3
    max_history: int = 8
    query_fraction: float = 0.3
    seed: int = 7
    # > 0: only the first eval_users users get validation/test impressions, the others train
    # on all theirs (a fixed evaluation while the log grows; configs/scale.yaml). 0 = all.
    eval_users: int = 0
    # True: each user's draws come from a generator seeded by (seed, user), so `prepare`
    # generates users in parallel processes (other data than False, same distribution).
    independent_users: bool = False
    # A planted unfairness the audit must find: clicks on biased_provider's items get
    # provider_bias extra log-odds, whatever the user's taste (0 = none).
    provider_bias: float = 0.0
    biased_provider: str = "acme"
    file_format: str = "csv"  # csv | jsonl


@dataclasses.dataclass
class MovieLensConfig:
    """MovieLens loading (trainer/data/movielens.py)."""

    variant: str = "auto"  # auto | ml-100k | ml-1m | ml-latest-small | ml-25m
    positive_threshold: float = 4.0
    min_positives: int = 3
    negatives_per_positive: int = 4
    negative_sampling: str = "uniform"  # uniform | popularity
    eval_negatives: int = 99
    use_tags: bool = True
    max_tags: int = 5  # most applied user tags kept in an item's `tags` text
    # Which tag applications may reach the item text (tags.csv has timestamps; the split is
    # chronological leave-last-out per user). "train": only those in the tagging user's
    # training period -- at or before their last training positive, never on their own
    # validation/test movie -- so the text reads nothing the split holds out. "all": every
    # application, whenever written (the behaviour before this option, with which the
    # MovieLens figures in docs/benchmarks.md were measured). On ml-latest-small "all" reads
    # 37 tags users wrote on their own held-out movie and 205 written after their last
    # training positive (242 of 3683), and changes the test movie's text for 32 of 608 users.
    tags_until: str = "train"  # train | all
    max_train_examples: int = 0  # 0 = all; a seeded subset otherwise
    seed: int = 13


@dataclasses.dataclass
class SequencesConfig:
    """Sequential-benchmark files (trainer/data/sequences.py): RecBole atomic files, as
    UniSRec and its successors release the Amazon benchmarks."""

    name: str = ""  # the files' prefix (<name>.train.inter, ...); "" = the only one there
    negatives_per_positive: int = 4  # sampled per training target (pointwise losses)
    eval_negatives: int = 99  # sampled per validation/test target (the sampled metrics)
    seed: int = 13
    # Cold start: a seeded share of the catalogue's items left out of every training row
    # (as target, in histories and as a sampled negative); validation and test keep them,
    # so the test users whose target is one of them measure cold-start ranking.
    cold_start_items: float = 0.0


@dataclasses.dataclass
class MindConfig:
    """MIND loading (trainer/data/mind.py)."""

    text_fields: list = dataclasses.field(
        default_factory=lambda: ["title", "category", "subcategory"])
    train_subdir: str = "train"
    dev_subdir: str = "dev"
    test_subdir: str = ""  # MIND-small has no labelled test: dev serves as test
    validation_fraction: float = 0.1
    max_train_impressions: int = 0
    seed: int = 17


@dataclasses.dataclass
class DataConfig:
    """Where examples come from and how they are turned into text pairs and token ids."""

    source: str = "synthetic"  # synthetic | files | movielens | mind | sequences
    data_dir: str = ""  # synthetic: where files are written ("" = <model_dir>/data)
    items_file: str = ""  # files: explicit paths (default: <data_dir>/items.{csv,jsonl})
    impressions_file: str = ""
    item_text_fields: list = dataclasses.field(
        default_factory=lambda: ["title", "categories", "description"])
    max_history: int = 5  # most recent history titles on the user side
    sequence_length: int = 64
    item_max_tokens: int = 24  # the candidate keeps up to this many tokens, always
    validation_fraction: float = 0.1  # used only when the data has no `split` column
    test_fraction: float = 0.1
    split_seed: int = 11
    vocab_size: int = 2000  # learned WordPiece vocabulary size for random-init models
    lowercase: bool = True
    shuffle_buffer: int = 20000
    # A directory of TFRecord shards written by `python -m trainer.task prepare` (written on
    # first use when absent or empty): training streams from it (trainer/data/prepare.py).
    tfrecord_dir: str = ""
    # Keep the tokenized training pairs in memory after the first epoch (~1 KB per example
    # at sequence length 128); not applied to tfrecord_dir sources, which stream.
    cache_tokens: bool = True
    examples_per_shard: int = 50000
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)
    movielens: MovieLensConfig = dataclasses.field(default_factory=MovieLensConfig)
    mind: MindConfig = dataclasses.field(default_factory=MindConfig)
    sequences: SequencesConfig = dataclasses.field(default_factory=SequencesConfig)


@dataclasses.dataclass
class ModelConfig:
    """Which model and its sizes. ``pretrained`` overrides the size fields for BERT.

    ``kind`` names a registered model kind (trainer/kinds/: ``two_tower``, ``sasrec``,
    ``cross_encoder``, ``glass_box``, ``mf``, ``popularity``, and any kind registered
    with ``trainer.kinds.register``). ``two_tower`` has one shared item encoder for the
    candidate, the history items and the query, then a user transformer
    (models/two_tower.py); ``frozen_two_tower`` is that model over frozen pretrained text
    vectors of the catalogue (``pretrained`` encodes them once) through a trainable
    ``adapter``; ``sasrec`` is that model without text (item ids only), the
    baseline that shows what text adds; ``cross_encoder`` is one encoder over "user side
    [SEP] item", the reranker and teacher; ``glass_box`` is a logistic regression over
    named word/item features (models/glass_box.py; ``l2`` is its per-word weight
    penalty), the readable distillation student. Configs written before the registry
    (``kind: bert`` with ``interaction: cross | two_tower``) are read as the new names.
    """

    kind: str = "cross_encoder"  # a name in trainer.kinds.names()
    pretrained: str = ""  # local HF dir, keras-hub preset name, or hf:// handle
    # two_tower: add a learned id embedding to each item vector and an item bias (items
    # unseen in training keep their text vector alone)
    item_ids: bool = False
    # two_tower / sasrec: transformer layers over the user sequence (0: none, the parts
    # are pooled as the item tower gives them)
    user_layers: int = 1
    user_heads: int = 2
    # two_tower / sasrec: the user vector u: mean (of the sequence outputs present) | first
    # (the output of the first present part: the query, else the most recent history
    # item, which attends to the rest through the user transformer, as SASRec reads the
    # latest position)
    user_pooling: str = "mean"
    # two_tower / sasrec: add the best match between the candidate and any single part of
    # the user side (query, each history item) to the pooled dot product (multi-interest)
    max_interest: bool = True
    # frozen_two_tower: the trainable adapter from the frozen pretrained text vectors to
    # the item space (models/layers/text_adapter.py): linear | whitening | moe (UniSRec's
    # mixture of whitening experts); its experts (moe) and its input dropout
    # two_tower / sasrec / frozen_two_tower: how the logit compares the user and item
    # vectors: dot (dot products / sqrt(d)) | cosine (cosines / temperature, UniSRec's
    # fine-tuning)
    similarity: str = "dot"
    temperature: float = 0.07
    adapter: str = "linear"
    adapter_experts: int = 8
    adapter_dropout: float = 0.2
    # frozen_two_tower: fine-tune the checkpoint's top k transformer layers (0: none, the
    # pooled vectors are frozen); the states below them are computed once and cached, and
    # each step runs the k layers over every text it reads (an accelerator's work)
    text_trainable_layers: int = 0
    num_layers: int = 2
    num_heads: int = 2
    hidden_dim: int = 64
    intermediate_dim: int = 256
    dropout: float = 0.1
    head_dropout: float = 0.1
    # cls: tanh(dense([CLS])) | first: the [CLS] vector | mean: over tokens (two_tower:
    # how each item text becomes one vector)
    pooling: str = "cls"
    normalize_first: bool = False  # random init only: pre-LN blocks (see pre_ln_bert_backbone)
    # Feed-forward activation of the pre-LN blocks (normalize_first=true): gelu | relu
    # (cheaper on a CPU). keras-hub's post-LN BertBackbone keeps its own GELU.
    activation: str = "gelu"
    max_sequence_length: int = 128
    embedding_dim: int = 32  # matrix factorisation
    l2: float = 0.0  # matrix factorisation embeddings / glass_box per-word weights: L2
    # item_knn (models/baselines.py ItemKNN): the neighbours each item keeps, the weight
    # of the history item at position p (0 = most recent) is decay ** p, and the
    # co-occurrence of a and b is divided by pop(a) ** exponent * pop(b) ** (1 - exponent)
    # (chosen on Amazon Scientific's validation split: docs/benchmarks.md)
    knn_neighbours: int = 100
    knn_recency_decay: float = 0.7
    knn_popularity_exponent: float = 0.9


@dataclasses.dataclass
class PrivacyConfig:
    """DP-SGD (trainer/training/privacy.py): each step trains on a Poisson sample of the training
    rows (each row in with probability batch_size / rows, cut at ``max_batch_size``), clips each row's gradient to ``l2_norm_clip``, adds
    Gaussian noise of standard deviation ``noise_multiplier * l2_norm_clip`` to the sum and
    divides by batch_size. The (epsilon, delta) spent, per training row, is accounted with
    dp-accounting's PLD accountant and written to metrics.json."""

    enabled: bool = False
    noise_multiplier: float = 1.0
    l2_norm_clip: float = 1.0
    delta: float = 0.0  # 0 = 1 / training rows
    # The Poisson sample is cut to this many rows (0 = a size the run exceeds with
    # probability under delta / 10); the accountant counts the truncation.
    max_batch_size: int = 0


@dataclasses.dataclass
class TrainConfig:
    """Optimisation. Steps are derived from the data size unless given."""

    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: int = 3
    steps_per_epoch: int = 0  # 0 = one pass over the training examples
    learning_rate: float = 1e-3
    # bce: pointwise on the labelled rows | softmax (two_tower / sasrec): sampled softmax
    # over the batch's candidates on the positive rows, accidental hits removed, logQ
    # corrected (for implicit feedback such as MovieLens) | full_softmax (id-only kinds:
    # sasrec, gru4rec): cross-entropy over every catalogue item, RecBole's CE
    loss: str = "bce"
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    clipnorm: float = 1.0
    early_stopping_patience: int = 2
    # What early stopping and the best checkpoint follow on the validation split: auc
    # (pooled over all rows, computed by fit) | group_auc | ndcg@10 (per impression/user,
    # then averaged: what a ranking benchmark reads; a softmax-trained model's logits carry
    # per-user offsets that pooled AUC penalises and ranking ignores) | full_ndcg@10 (each
    # validation positive ranked against the whole catalogue, nothing excluded: the
    # sequential benchmarks' published protocol; kinds with cached item vectors)
    early_stopping_metric: str = "auc"
    seed: int = 42
    jit_compile: bool = False  # XLA-compile the train step
    steps_per_execution: int = 1  # train steps per tf.function call (TPUs, tiny models)
    # Write the served SavedModels (export/, export_tokens/) at the end of training. Tracing
    # their signatures takes about as long as a tiny run's training: sweeps and quick
    # experiments can skip it and write them later with the `export` command.
    export: bool = True
    privacy: PrivacyConfig = dataclasses.field(default_factory=PrivacyConfig)


@dataclasses.dataclass
class RuntimeConfig:
    """Where it runs: see trainer/training/distribute.py."""

    # Keras backend (trainer/backend.py): auto (KERAS_BACKEND, else tensorflow) | tensorflow
    # | jax. tf.data with in-graph tokenization feeds either; JAX is the TPU path.
    backend: str = "auto"
    strategy: str = "auto"  # auto | tpu | multi_worker | mirrored | one_device | default
    tpu: str = ""  # TPU name/address for the resolver ("" = Colab/TPU VM default)
    devices: list = dataclasses.field(default_factory=list)  # mirrored/one_device device names
    logical_cpus: int = 0  # >1 splits the CPU into logical devices (tests, laptops)
    # JAX only: >1 splits each transformer layer's weights (heads, feed-forward, token
    # embedding) across this many devices, data parallel across the rest
    # (trainer/training/distribute.py
    # JaxStrategy); for backbones larger than one device's memory. 1 = data parallel only.
    model_parallel: int = 1
    # float32 | mixed_bfloat16 (TPUs, recent GPUs) | mixed_float16 (older GPUs); the click
    # head and the loss stay float32 either way.
    precision: str = "float32"
    # [first, last] training steps (1-based, per fit) to trace with the TensorFlow profiler
    # into tensorboard/train (view with the [profile] extra's Profile tab); [] = off.
    profile_steps: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class TuneConfig:
    """Hyperparameter search (``python -m trainer.task tune``, trainer/training/tune_lib.py).

    ``space`` lists the config fields a trial may change, one mapping each::

        {key: train.learning_rate, type: float, min: 1.0e-4, max: 3.0e-3, sampling: log}
        {key: model.num_layers, type: int, min: 1, max: 2}
        {key: model.hidden_dim, type: choice, values: [32, 64]}

    ``type`` is float | int | choice; ``sampling`` linear (default) | log; ``step`` is
    optional for numbers. Every trial is this config with the sampled fields replaced,
    trained through the one training library and scored by ``objective`` on validation.
    """

    algorithm: str = "random"  # random | bayesian | hyperband
    max_trials: int = 10
    objective: str = "val_auc"  # val_auc (maximised) | val_loss (minimised)
    executions_per_trial: int = 1
    hyperband_factor: int = 3  # hyperband: trains up to train.epochs per trial
    seed: int = 0
    space: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DistillConfig:
    """Knowledge distillation (``python -m trainer.task distill``, trainer/training/distill_lib.py).

    The student trains on ``alpha * BCE(labels) + (1 - alpha) * T^2 * KD(teacher / T)``
    (models/distillation.py) over the training impressions plus
    ``unlabelled_per_example`` catalogue pairs per training row: the row's user with an
    item drawn uniformly from the catalogue, which only the teacher's logit labels.
    Ignored by ``train``.
    """

    alpha: float = 0.5
    temperature: float = 2.0
    unlabelled_per_example: int = 1
    # per_user: subtract from the teacher's logits their mean over each user state (a
    # training impression's logged rows and their drawn pairs) before the KD loss. A
    # softmax-trained teacher's logits are defined only up to a per-user constant, which
    # binary KD would otherwise have to copy (and which can saturate the sigmoid).
    teacher_centering: str = "none"


@dataclasses.dataclass
class ExperimentConfig:
    """The whole experiment; ``name`` is informational."""

    name: str = "experiment"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    tune: TuneConfig = dataclasses.field(default_factory=TuneConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)


_CHOICES = {
    "data.source": ("synthetic", "files", "movielens", "mind", "sequences"),
    "data.synthetic.file_format": ("csv", "jsonl"),
    "data.movielens.variant": ("auto", "ml-100k", "ml-1m", "ml-latest-small", "ml-25m"),
    "data.movielens.negative_sampling": ("uniform", "popularity"),
    "data.movielens.tags_until": ("train", "all"),
    "train.loss": ("bce", "softmax", "full_softmax"),
    "train.early_stopping_metric": ("auc", "group_auc", "ndcg@10", "full_ndcg@10"),
    "model.pooling": ("cls", "first", "mean"),
    "model.user_pooling": ("mean", "first"),
    "model.adapter": ("linear", "whitening", "moe"),
    "model.similarity": ("dot", "cosine"),
    "runtime.strategy": ("auto", "tpu", "multi_worker", "mirrored", "one_device", "default"),
    "runtime.precision": ("float32", "mixed_bfloat16", "mixed_float16"),
    "runtime.backend": ("auto", "tensorflow", "jax"),
    "tune.algorithm": ("random", "bayesian", "hyperband"),
    "distill.teacher_centering": ("none", "per_user"),
    "tune.objective": ("val_auc", "val_loss"),
}


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Coerce a YAML value to the field's type or raise a ConfigError naming ``key``."""
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads "3e-5" as a string; it is plainly meant as a number.
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation is list:
        if isinstance(value, list):
            return list(value)
    else:  # pragma: no cover - only the annotations above are used
        raise TypeError(f"unsupported annotation {annotation!r} for {key}")
    raise ConfigError(
        f"config key '{key}' expects {annotation.__name__}, got {type(value).__name__} "
        f"{value!r}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}' must be a mapping, "
                          f"got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = prefix + str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{dotted}'; valid keys here: {', '.join(sorted(fields))}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, dotted + ".")
        else:
            kwargs[key] = _check_value(dotted, value, hint)
            choices = _CHOICES.get(dotted)
            if choices and kwargs[key] not in choices:
                raise ConfigError(f"config key '{dotted}' must be one of {choices}, "
                                  f"got {kwargs[key]!r}")
    return cls(**kwargs)


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config_path(path: str) -> str:
    """``path`` itself when it exists (or is a URL such as ``gs://``); otherwise, for a
    relative ``configs/NAME.yaml``, the copy installed with the package (or the checkout's,
    for an editable install), so cloud jobs and notebooks can name the repository's configs
    from any working directory."""
    if "://" in path:
        return path
    if os.path.exists(path) or os.path.isabs(path):
        return os.path.abspath(path)
    parts = os.path.normpath(path).split(os.sep)
    if parts[0] == "configs":
        for directory in (PACKAGED_CONFIGS_DIR, _CHECKOUT_CONFIGS_DIR):
            candidate = os.path.join(directory, *parts[1:])
            if os.path.exists(candidate):
                return candidate
    return os.path.abspath(path)


def _read_text(path: str) -> str:
    if "://" in path:  # gs://, and anything else TensorFlow's file systems know
        import tensorflow as tf  # pylint: disable=import-outside-toplevel  # only for URLs
        if not tf.io.gfile.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with tf.io.gfile.GFile(path) as f:
            return f.read()
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 text (byte offset {err.start}); "
                          "re-save the config as UTF-8") from None


def _read_yaml(path: str, seen: tuple = ()) -> dict:
    path = resolve_config_path(path)
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        raw = yaml.safe_load(_read_text(path)) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config groups")
    base = raw.pop("base", None)
    if base:
        # URLs join with "/" whatever the local OS uses.
        paths = posixpath if "://" in path else os.path
        parent = _read_yaml(paths.join(paths.dirname(path), base), seen + (path,))
        raw = _deep_merge(parent, raw)
    return raw


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like group.key=value")
    key, text = item.split("=", 1)
    # YAML parsing gives 3e-5 -> float, true -> bool, [a, b] -> list, like the config file.
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key.strip().split("."), "" if value is None else value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Returns ``raw`` with dotted ``key=value`` overrides applied (validated later)."""
    raw = _deep_merge({}, raw)
    for item in overrides or []:
        path, value = _parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a config group")
        node[path[-1]] = value
    return raw


def _migrate(raw: dict) -> dict:
    """Reads configs and run directories written by earlier versions.

    ``model.kind: bert`` with ``model.interaction: cross | two_tower`` became
    ``model.kind: cross_encoder | two_tower`` (the registry of kinds, trainer/kinds/).

    ``runtime.mixed_precision`` (a bool that no code read, so every run trained in
    float32) became ``runtime.precision``: its default ``false`` is dropped; ``true`` asks
    for something that never happened, so it is an error that names the new key.
    """
    model = raw.get("model")
    if isinstance(model, dict) and ("interaction" in model or model.get("kind") == "bert"):
        model = dict(model)
        interaction = model.pop("interaction", "cross")
        if model.get("kind") in kinds.LEGACY_BERT_INTERACTIONS.values():
            raise ConfigError("config key 'model.interaction' was replaced by model.kind: "
                              "set model.kind="
                              f"{' or '.join(kinds.LEGACY_BERT_INTERACTIONS.values())}")
        if model.get("kind", "bert") == "bert":
            if interaction not in kinds.LEGACY_BERT_INTERACTIONS:
                raise ConfigError(f"config key 'model.interaction' must be one of "
                                  f"{tuple(kinds.LEGACY_BERT_INTERACTIONS)}, got "
                                  f"{interaction!r} (or use model.kind="
                                  f"{' | '.join(kinds.LEGACY_BERT_INTERACTIONS.values())})")
            model["kind"] = kinds.LEGACY_BERT_INTERACTIONS[interaction]
        raw = {**raw, "model": model}
    runtime = raw.get("runtime")
    if isinstance(runtime, dict) and "mixed_precision" in runtime:
        runtime = dict(runtime)
        if runtime.pop("mixed_precision"):
            raise ConfigError("config key 'runtime.mixed_precision' was replaced by "
                              "'runtime.precision': set it to mixed_bfloat16 or "
                              "mixed_float16")
        raw = {**raw, "runtime": runtime}
    return raw


def config_from_dict(raw: dict) -> ExperimentConfig:
    """Builds and validates an :class:`ExperimentConfig` from a plain dict."""
    cfg = _build(ExperimentConfig, _migrate(raw), "")
    validate(cfg)
    return cfg


def _is_pipeline(raw: dict) -> bool:
    return "retrieve" in raw or "rerank" in raw


def is_pipeline_config(path: str) -> bool:
    """Whether the YAML at ``path`` describes a retrieve -> rerank pipeline
    (:class:`PipelineConfig`, read by :func:`load_pipeline`) rather than an experiment."""
    return _is_pipeline(_read_yaml(path))


def load_config(path: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Reads a YAML config (following ``base:``), applies overrides and validates it."""
    raw = _read_yaml(path)
    if _is_pipeline(raw):
        raise ConfigError(f"{path} is a retrieve -> rerank pipeline config (it has "
                          "'retrieve'/'rerank' keys), not an experiment: use it with "
                          "`python -m trainer.task recommend --pipeline " + path + "`")
    try:
        return config_from_dict(apply_overrides(raw, overrides or []))
    except ConfigError as err:
        if str(err).startswith(path):
            raise
        raise ConfigError(f"{path}: {err}") from None


def diff_keys(a, b, prefix: str = "") -> list:
    """The dotted keys where two config dicts (``to_dict``) differ, sorted."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def to_dict(cfg: ExperimentConfig) -> dict:
    """The resolved config as plain data (what ``config.yaml`` in a run directory holds)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _validate_privacy(cfg: ExperimentConfig) -> None:
    """DP-SGD settings whose accounting would not hold are refused here, before any data
    is read (trainer/training/privacy.py checks what needs the data or the strategy)."""
    p = cfg.train.privacy
    if p.noise_multiplier <= 0:
        raise ConfigError(f"config key 'train.privacy.noise_multiplier' must be > 0, got "
                          f"{p.noise_multiplier}: without noise clipping gives no privacy")
    if p.l2_norm_clip <= 0:
        raise ConfigError(f"config key 'train.privacy.l2_norm_clip' must be > 0, got "
                          f"{p.l2_norm_clip}")
    if not 0 <= p.delta < 1:
        raise ConfigError(f"config key 'train.privacy.delta' must be in [0, 1) (0 = 1 / "
                          f"training rows), got {p.delta}")
    if p.max_batch_size and p.max_batch_size < cfg.train.batch_size:
        raise ConfigError(f"config key 'train.privacy.max_batch_size' ({p.max_batch_size}) "
                          f"must be 0 or at least train.batch_size ({cfg.train.batch_size})")
    if not p.enabled:
        return
    why = None
    if cfg.train.loss == "softmax":
        why = ("train.loss=softmax scores each row against the other rows of its batch, so "
               "one row's gradient is not its own and clipping it bounds nothing; use bce")
    elif cfg.train.loss == "full_softmax":
        why = ("train.loss=full_softmax is added by the model, not the compiled per-example "
               "loss the private step clips; use bce")
    elif cfg.runtime.backend == "jax":
        why = "the per-example gradient step is written for TensorFlow; use runtime.backend=tensorflow"
    elif cfg.runtime.strategy in ("multi_worker", "mirrored", "tpu"):
        why = (f"runtime.strategy={cfg.runtime.strategy}: each replica would add its own "
               "noise to a share of the sample; train on one device")
    elif cfg.data.tfrecord_dir:
        why = ("data.tfrecord_dir streams the rows in order; Poisson sampling draws from "
               "all of them each step, which needs the table in memory")
    elif cfg.train.steps_per_execution != 1 or cfg.train.jit_compile:
        why = "the DP step runs one step per call without XLA (train.steps_per_execution=1, train.jit_compile=false)"
    if why:
        raise ConfigError(f"config key 'train.privacy.enabled': {why}")


def validate(cfg: ExperimentConfig) -> None:
    """Cross-field checks that a type alone cannot express."""
    def positive(key: str, value: float) -> None:
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {value}")

    d, m, t = cfg.data, cfg.model, cfg.train
    positive("data.sequence_length", d.sequence_length)
    positive("data.item_max_tokens", d.item_max_tokens)
    positive("train.batch_size", t.batch_size)
    positive("train.eval_batch_size", t.eval_batch_size)
    positive("train.epochs", t.epochs)
    positive("train.steps_per_execution", t.steps_per_execution)
    positive("train.learning_rate", t.learning_rate)
    if d.item_max_tokens > d.sequence_length - 3:
        raise ConfigError(
            f"config key 'data.item_max_tokens' ({d.item_max_tokens}) must leave room for "
            f"[CLS]/[SEP] tokens: at most data.sequence_length - 3 = {d.sequence_length - 3}")
    if d.sequence_length > m.max_sequence_length:
        raise ConfigError(
            f"config key 'data.sequence_length' ({d.sequence_length}) exceeds "
            f"'model.max_sequence_length' ({m.max_sequence_length})")
    if not 0 <= d.validation_fraction < 1 or not 0 <= d.test_fraction < 1 or \
            d.validation_fraction + d.test_fraction >= 1:
        raise ConfigError("config keys 'data.validation_fraction' + 'data.test_fraction' must "
                          "each be in [0, 1) and sum below 1")
    if m.kind not in kinds.names():
        raise ConfigError(f"config key 'model.kind' must be one of {kinds.names()}, got "
                          f"{m.kind!r}")
    if t.early_stopping_metric != "auc" and cfg.runtime.strategy == "multi_worker":
        raise ConfigError(f"config key 'train.early_stopping_metric': "
                          f"{t.early_stopping_metric} is scored on one worker; with "
                          "runtime.strategy=multi_worker use auc")
    if not 0.0 <= cfg.distill.alpha <= 1.0:
        raise ConfigError(f"config key 'distill.alpha' must be in [0, 1], got "
                          f"{cfg.distill.alpha}")
    positive("distill.temperature", cfg.distill.temperature)
    if cfg.distill.unlabelled_per_example < 0:
        raise ConfigError("config key 'distill.unlabelled_per_example' must be >= 0, got "
                          f"{cfg.distill.unlabelled_per_example}")
    if m.activation not in ("gelu", "relu"):
        raise ConfigError(f"config key 'model.activation' must be gelu or relu, got "
                          f"{m.activation!r}")
    if m.activation != "gelu" and not m.normalize_first:
        raise ConfigError("config key 'model.activation' applies to the pre-LN encoder of a "
                          "random-init model; add --set model.normalize_first=true (keras-hub's "
                          "post-LN BertBackbone and pretrained checkpoints keep their GELU)")
    if m.pretrained and m.normalize_first:
        raise ConfigError("config key 'model.normalize_first' applies to random init only; a "
                          "pretrained checkpoint (model.pretrained) keeps its own architecture; "
                          "add --set model.normalize_first=false")
    split = cfg.runtime.model_parallel
    positive("runtime.model_parallel", split)
    if split > 1:
        if cfg.runtime.backend == "tensorflow":
            raise ConfigError("config key 'runtime.model_parallel' > 1 needs runtime.backend="
                              "jax (keras.distribution.ModelParallel); TensorFlow strategies "
                              "here are data parallel")
        if not m.pretrained:
            for key, value in (("model.num_heads", m.num_heads),
                               ("model.intermediate_dim", m.intermediate_dim),
                               ("model.hidden_dim", m.hidden_dim)):
                if value % split:
                    raise ConfigError(f"config key '{key}' ({value}) must be divisible by "
                                      f"'runtime.model_parallel' ({split}): its weights are "
                                      "split across that many devices")
    if not 0 <= t.warmup_fraction < 1:
        raise ConfigError("config key 'train.warmup_fraction' must be in [0, 1)")
    if not d.item_text_fields:
        raise ConfigError("config key 'data.item_text_fields' must name at least one field")
    profile = cfg.runtime.profile_steps
    if profile and (len(profile) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                 for v in profile)
                    or not 1 <= profile[0] <= profile[1]):
        raise ConfigError(f"config key 'runtime.profile_steps' must be [] or [first, last] "
                          f"with 1 <= first <= last, got {profile!r}")
    _validate_privacy(cfg)
    positive("tune.max_trials", cfg.tune.max_trials)
    positive("tune.executions_per_trial", cfg.tune.executions_per_trial)
    if cfg.tune.hyperband_factor < 2:
        raise ConfigError("config key 'tune.hyperband_factor' must be >= 2")
    tune_space(cfg)


# ---------------------------------------------------------------------------------------
# Retrieve -> rerank pipelines (``recommend --pipeline``)
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class RetrieveStage:
    """The first stage: a two-tower run scores the whole catalogue from its item index and
    hands its top ``candidates`` (items the user has seen excluded) to the reranker."""

    model_dir: str = ""
    candidates: int = 100


@dataclasses.dataclass
class RerankStage:
    """The second stage: any finished run (a cross-encoder, another two-tower, a glass
    box) scores each retrieved (user, item) pair. The final score is
    ``rerank logit + retrieval_weight * retrieval logit`` (0: the reranker alone)."""

    model_dir: str = ""
    retrieval_weight: float = 0.0


@dataclasses.dataclass
class PipelineConfig:
    """A retrieve -> rerank recommender: which run does each stage, and how many items
    come back (``k``, the default of ``recommend --k``)."""

    name: str = "pipeline"
    retrieve: RetrieveStage = dataclasses.field(default_factory=RetrieveStage)
    rerank: RerankStage = dataclasses.field(default_factory=RerankStage)
    k: int = 10


def load_pipeline(path: str, overrides: list[str] | None = None) -> PipelineConfig:
    """Reads a pipeline YAML (``base:`` and ``--set`` overrides as for experiments),
    strictly: unknown keys, wrong types and impossible values name their key."""
    raw = apply_overrides(_read_yaml(path), overrides or [])
    try:
        cfg = _build(PipelineConfig, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    for key, value in (("retrieve.model_dir", cfg.retrieve.model_dir),
                       ("rerank.model_dir", cfg.rerank.model_dir)):
        if not value:
            raise ConfigError(f"{path}: config key '{key}' is required: a finished run "
                              "directory (written by `train` or `distill`)")
    if cfg.retrieve.candidates < 1:
        raise ConfigError(f"{path}: config key 'retrieve.candidates' must be >= 1, got "
                          f"{cfg.retrieve.candidates}")
    if not 1 <= cfg.k <= cfg.retrieve.candidates:
        raise ConfigError(f"{path}: config key 'k' must be in [1, retrieve.candidates = "
                          f"{cfg.retrieve.candidates}], got {cfg.k}")
    if not math.isfinite(cfg.rerank.retrieval_weight) or cfg.rerank.retrieval_weight < 0:
        raise ConfigError(f"{path}: config key 'rerank.retrieval_weight' must be a finite "
                          f"number >= 0, got {cfg.rerank.retrieval_weight}")
    return cfg


_SPACE_KEYS = {"key", "type", "min", "max", "step", "sampling", "values"}


def field_annotation(dotted: str) -> Any:
    """The type of the config field at ``dotted`` (e.g. ``train.learning_rate``), or None
    when there is no such scalar field."""
    cls, parts = ExperimentConfig, dotted.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        hint = hints[part]
        if dataclasses.is_dataclass(hint):
            cls = hint
            continue
        return hint if i == len(parts) - 1 else None
    return None


def tune_space(cfg: ExperimentConfig) -> list[dict]:
    """``tune.space`` checked entry by entry; returns the entries with defaults filled in
    (``sampling: linear``, ``step: None``). Raises ConfigError naming ``tune.space[i]``."""
    entries, seen = [], set()
    for i, entry in enumerate(cfg.tune.space):
        where = f"tune.space[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"config key '{where}' must be a mapping like {{key: "
                              f"train.learning_rate, type: float, min: 1e-4, max: 1e-2}}")
        unknown = set(entry) - _SPACE_KEYS
        if unknown:
            raise ConfigError(f"config key '{where}' has unknown fields {sorted(unknown)}; "
                              f"valid: {sorted(_SPACE_KEYS)}")
        key = entry.get("key")
        annotation = field_annotation(key) if isinstance(key, str) else None
        if annotation is None or annotation is list or key.split(".")[0] in ("tune", "name"):
            raise ConfigError(f"config key '{where}.key' must name a scalar config field such "
                              f"as train.learning_rate, got {key!r}")
        if key in seen:
            raise ConfigError(f"config key '{where}.key': {key} appears twice in tune.space")
        seen.add(key)
        kind = entry.get("type")
        out = {"key": key, "type": kind, "sampling": entry.get("sampling", "linear"),
               "step": entry.get("step")}
        if kind == "choice":
            values = entry.get("values")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"config key '{where}.values' must be a non-empty list")
            out["values"] = [_check_value(f"{where}.values ({key})", v, annotation)
                             for v in values]
            choices = _CHOICES.get(key)
            for v in out["values"]:
                if choices and v not in choices:
                    raise ConfigError(f"config key '{where}.values': {v!r} is not one of "
                                      f"{choices} ({key})")
        elif kind in ("float", "int"):
            expected = float if kind == "float" else int
            if annotation is not expected:
                raise ConfigError(f"config key '{where}.type': {key} is "
                                  f"{annotation.__name__}, so use type "
                                  f"{'choice' if annotation in (str, bool) else annotation.__name__}")
            for bound in ("min", "max"):
                out[bound] = _check_value(f"{where}.{bound}", entry.get(bound), expected)
            if out["step"] is not None:
                out["step"] = _check_value(f"{where}.step", out["step"], expected)
            if not out["min"] < out["max"]:
                raise ConfigError(f"config key '{where}': min ({out['min']}) must be below "
                                  f"max ({out['max']})")
            if out["sampling"] not in ("linear", "log"):
                raise ConfigError(f"config key '{where}.sampling' must be linear or log, got "
                                  f"{out['sampling']!r}")
            if out["sampling"] == "log" and out["min"] <= 0:
                raise ConfigError(f"config key '{where}': log sampling needs min > 0")
        else:
            raise ConfigError(f"config key '{where}.type' must be float, int or choice, got "
                              f"{kind!r}")
        entries.append(out)
    return entries
