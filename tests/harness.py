"""What the tests share: paths, the backend, tiny configs and models, and the one model
harness every registered kind runs through (as KerasHub's ``run_layer_test`` /
``run_model_saving_test``).

Tests import from here; ``conftest.py`` only defines fixtures.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import shutil
import tempfile

import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from bert_recommender.models.layers.item_text_tokenizer import ItemTextTokenizer
from bert_recommender.models.layers.pre_ln_bert_backbone import PreLNBertBackbone
from bert_recommender.models.two_tower import TwoTowerRecommender
from trainer.data import input_pipeline
from trainer.data.canonical import Catalogue, Item
from trainer.data.input_pipeline import RESERVED_TOKENS
from trainer.kinds.two_tower import TwoTowerFeatures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")
MINILM_DIR = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")
MOVIELENS_SMALL_DIR = os.path.join(SHARED, "data", "ml-latest-small")
TINY_CONFIG = os.path.join(REPO, "configs", "tiny.yaml")

# The Keras backend these tests run under (`make test` runs the model tests and a short
# training run under JAX as well; trainer/backend.py).
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")

# In-process SavedModel export (and anything calling a model from tf.function or a
# GradientTape) is TensorFlow's; under JAX a run exports from a TensorFlow child process,
# tested in tests/trainer/test_backends.py.
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow-backend path (SavedModel, tf gradients)")

# Smaller than configs/tiny.yaml: keeps each end-to-end training run to a few seconds.
MICRO_OVERRIDES = [
    "data.synthetic.num_items=40", "data.synthetic.num_users=24",
    "data.synthetic.impressions_per_user=4", "data.synthetic.candidates_per_impression=3",
    "data.vocab_size=100", "train.epochs=1", "train.batch_size=8",
]


def require_shared(path):
    """``path`` under ../shared, or a clean skip when this machine does not have it."""
    if not os.path.exists(path):
        pytest.skip(f"{path} not present")
    return path


def tiny_config(*overrides):
    """configs/tiny.yaml shrunk to :data:`MICRO_OVERRIDES`, then ``overrides``."""
    from trainer import config as config_lib

    return config_lib.load_config(TINY_CONFIG, MICRO_OVERRIDES + list(overrides))


# ---------------------------------------------------------------------------------------
# Tiny text models (vocabulary ~100, hidden 16, 1-2 layers)
# ---------------------------------------------------------------------------------------

def tiny_tokenizer(vocabulary: list):
    return keras_hub.tokenizers.BertTokenizer(vocabulary=list(vocabulary), lowercase=True)


def tiny_text_packer(vocabulary: list, sequence_length: int = 16, item_max_tokens: int = 6):
    """A ``TextPairPacker`` over ``vocabulary``."""
    from bert_recommender.models.layers.text_pair_packer import TextPairPacker

    return TextPairPacker(tiny_tokenizer(vocabulary), sequence_length=sequence_length,
                          item_max_tokens=item_max_tokens)


def tiny_bert(vocabulary_size: int, max_sequence_length: int = 16, num_layers: int = 1,
              **kwargs):
    """A randomly initialised ``BERTRecommender`` of hidden size 16."""
    from bert_recommender.models.bert_recommender import BERTRecommender

    return BERTRecommender.from_sizes(vocabulary_size=vocabulary_size, num_layers=num_layers,
                                      num_heads=2, hidden_dim=16, intermediate_dim=32,
                                      max_sequence_length=max_sequence_length, **kwargs)


# The explainability tests' tiny text model: vocabulary ~40 words, hidden 16, 1-2 layers.
WORDS = ("looking for a laptop phone camera acme globex initech wireless waterproof vintage "
         "leather gaming compact pro new classic edition retro").split()
# "##s" lets a word split into pieces ("laptops" -> laptop ##s), as WordPiece does.
VOCABULARY = RESERVED_TOKENS + [";"] + list(WORDS) + ["##s", "##er"]
USER_TEXT = "looking for a laptop ; acme wireless laptops new ; globex vintage camera"
ITEM_TEXT = "initech wireless laptop pro"


def make_packer(sequence_length=32, item_max_tokens=10):
    """A ``TextPairPacker`` over :data:`VOCABULARY`."""
    return tiny_text_packer(VOCABULARY, sequence_length, item_max_tokens)


def make_model(seed=0, pooling="first", normalize_first=True, num_layers=2):
    """A built ``BERTRecommender`` over :data:`VOCABULARY` (hidden 16, no dropout)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = tiny_bert(len(VOCABULARY), max_sequence_length=32, num_layers=num_layers,
                      dropout=0.0, head_dropout=0.0, pooling=pooling,
                      normalize_first=normalize_first)
    model({"token_ids": np.zeros([1, 32], np.int32), "segment_ids": np.zeros([1, 32], np.int32)})
    return model


# The two-tower unit tests' tiny model and catalogue (ITEM_TOKENS per text, HISTORY items).
TWO_TOWER_WORDS = [f"w{i}" for i in range(60)]
TWO_TOWER_VOCAB = RESERVED_TOKENS + TWO_TOWER_WORDS
ITEM_TOKENS = 6
HISTORY = 3


def make_catalogue(num_items=12, seed=0):
    """A catalogue of ``num_items`` items titled with two of :data:`TWO_TOWER_WORDS`."""
    rng = np.random.default_rng(seed)
    catalogue = Catalogue()
    for i in range(num_items):
        words = rng.choice(len(TWO_TOWER_WORDS), 2, replace=False)
        title = " ".join(TWO_TOWER_WORDS[w] for w in words)
        catalogue[f"i{i:02d}"] = Item(f"i{i:02d}", {"title": title})
    return catalogue


def make_features(catalogue, trained_items):
    """``TwoTowerFeatures`` of ``catalogue`` (ids of ``trained_items`` known to training)."""
    tokenizer = ItemTextTokenizer(input_pipeline.make_tokenizer(vocabulary=TWO_TOWER_VOCAB),
                                  ITEM_TOKENS)
    ids = input_pipeline.IdVocabulary(users={}, items={k: i + 1 for i, k in
                                                       enumerate(sorted(catalogue))},
                                      trained_items=frozenset(trained_items))
    return TwoTowerFeatures.build(tokenizer, catalogue, ids, ["title"], HISTORY)


def tiny_two_tower(features, item_ids=True, text=True, loss="bce", hidden=16, user_layers=1):
    """A ``TwoTowerRecommender`` over ``features``: text, ids or both, hidden 16."""
    encoder = PreLNBertBackbone(vocabulary_size=len(TWO_TOWER_VOCAB), num_layers=1,
                                num_heads=2,
                                hidden_dim=hidden, intermediate_dim=2 * hidden,
                                max_sequence_length=ITEM_TOKENS) if text else None
    return TwoTowerRecommender(encoder, num_items=len(features.item_ids) - 1 if item_ids else 0,
                               max_history=HISTORY, embedding_dim=0 if text else hidden,
                               dropout=0.0, loss=loss, user_layers=user_layers)


def raw_batch(catalogue):
    """Four users' raw serving inputs, with padding, an empty user and an unknown id."""
    ids = sorted(catalogue)
    history_ids = [[ids[0], ids[1], ""], [ids[2], "", ""], ["", "", ""], [ids[3], ids[4],
                                                                          ids[5]]]
    item_id = [ids[6], ids[7], ids[8], "unknown-id"]
    text = lambda i: catalogue[i].title if i in catalogue else ""  # noqa: E731
    return {"query": tf.constant(["w1 w2", "", "w3", ""]),
            "history_text": tf.constant([[text(i) for i in row] for row in history_ids]),
            "history_ids": tf.constant(history_ids),
            "item_text": tf.constant([text(i) for i in item_id[:3]] + ["w5 w6"]),
            "item_id": tf.constant(item_id)}


def model_inputs(features, raw):
    """The model inputs of :func:`raw_batch` through ``features.from_text``."""
    return features.from_text(raw["query"], raw["history_text"], raw["item_text"],
                              history_ids=raw["history_ids"], item_ids=raw["item_id"])


# ---------------------------------------------------------------------------------------
# The model harness of every registered kind
# ---------------------------------------------------------------------------------------

# Settings that make each kind tiny (hidden 16, one layer, short texts).
TINY_MODEL = ["model.hidden_dim=16", "model.intermediate_dim=32", "model.num_layers=1",
              "model.num_heads=2", "model.user_heads=2", "model.embedding_dim=8",
              "data.item_max_tokens=8", "data.sequence_length=24",
              "model.max_sequence_length=24", "model.dropout=0.0", "model.head_dropout=0.0"]


def required_overrides(name: str) -> list:
    """Settings kind ``name`` cannot be built without (a pretrained checkpoint: the tiny
    random one of :func:`tiny_checkpoint`)."""
    if name != "frozen_two_tower":
        return []
    return [f"model.pretrained={tiny_checkpoint()}", "model.normalize_first=false"]


@functools.lru_cache(maxsize=None)
def tiny_checkpoint() -> str:
    """One :func:`write_tiny_checkpoint` per test process (removed when it exits)."""
    directory = tempfile.mkdtemp(prefix="tiny_checkpoint_")
    atexit.register(shutil.rmtree, directory, True)
    return write_tiny_checkpoint(os.path.join(directory, "ckpt"))


@dataclasses.dataclass
class TinyKind:
    """A registered kind built through the registry on micro synthetic data."""

    cfg: object
    kind: object
    prepared: object
    featurizer: object
    model: object


def build_tiny_kind(name: str, data_dir: str, *overrides) -> TinyKind:
    """Kind ``name`` at :data:`TINY_MODEL` sizes on the micro synthetic data (written under
    ``data_dir``), built and counted as ``train`` builds it."""
    from trainer import kinds
    from trainer.training import train_lib

    loss = "softmax" if kinds.kind_class(name).separate_towers else "bce"
    cfg = tiny_config(f"model.kind={name}", f"train.loss={loss}", *TINY_MODEL,
                      *required_overrides(name), *overrides)
    kind = kinds.for_config(cfg)
    prepared = train_lib.prepare_data(cfg, data_dir)
    featurizer = train_lib.make_packer(cfg, prepared.vocabulary, prepared)
    model = train_lib.build_model(cfg, featurizer, prepared.ids, prepared.tables["train"])
    model(kind.dummy_batch(featurizer))
    return TinyKind(cfg, kind, prepared, featurizer, model)


def run_model_harness(name: str, tmp_path, *overrides, saved_model: bool = True) -> TinyKind:
    """Builds kind ``name`` through the registry and checks: fitting changes its
    trainable weights (none for a counted kind); ``get_config`` / ``from_config`` and the
    ``.keras`` file give the same logits; catalogue scoring agrees with pair scoring; and
    (TensorFlow, unless ``saved_model`` is false) the SavedModel ``serving_default`` and,
    for text kinds, the token-id export serve the same logits from the kind's own
    requests."""
    import keras

    from trainer.evaluation import scoring
    from trainer.serving import export
    from trainer.training import optimization

    tiny = build_tiny_kind(name, str(tmp_path / "data"), *overrides)
    cfg, kind, featurizer, model = tiny.cfg, tiny.kind, tiny.featurizer, tiny.model
    table = tiny.prepared.tables["test"].subset(np.arange(6))

    # Two fit steps (the learning rate warms up from 0 at the first).
    rows = kind.training_rows(cfg, tiny.prepared.tables["train"])
    data = input_pipeline.make_dataset(rows, 8, packer=featurizer, training=True).take(2)
    optimization.compile_for_training(model, cfg, total_steps=10)
    before = [np.array(w) for w in model.trainable_weights]
    model.fit(data, epochs=1, verbose=0)
    after = [np.array(w) for w in model.trainable_weights]
    if kind.counted:
        assert not model.trainable_weights, "a counted kind has no trainable weights"
    else:
        assert any(not np.allclose(a, b) for a, b in zip(before, after)), "fit changed nothing"
    logits = scoring.predict_logits(model, table, featurizer, 16)
    assert logits.shape == (len(table),) and np.isfinite(logits).all()

    # get_config round trip.
    clone = type(model).from_config(model.get_config())
    clone(kind.dummy_batch(featurizer))
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(scoring.predict_logits(clone, table, featurizer, 16), logits,
                               atol=1e-5)
    assert clone.get_config() == model.get_config()

    # .keras round trip.
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(scoring.predict_logits(reloaded, table, featurizer, 16), logits,
                               atol=1e-5)

    # Catalogue scoring (cached item vectors or pair by pair) agrees with pair scoring.
    item_text = tiny.prepared.ids.item_texts(tiny.prepared.catalogue,
                                             cfg.data.item_text_fields)
    full = kind.catalogue_logits(model, featurizer, table, item_text, 16)
    np.testing.assert_allclose(full[np.arange(len(table)), table.item_index], logits,
                               atol=1e-4)
    # Per-epoch validation from the catalogue (one user state per group) gives the logits
    # of the pass over the rows.
    validation = tiny.prepared.tables["validation"]
    grouping = kind.catalogue_grouping(validation, item_text)
    assert (grouping is not None) == (kind.scores_catalogue_from_item_vectors
                                      and len(item_text) <= len(validation))
    if grouping is not None:
        np.testing.assert_allclose(
            kind.table_logits_from_catalogue(model, featurizer, grouping, item_text, 16),
            scoring.predict_logits(model, validation, featurizer, 16), atol=1e-4)

    if BACKEND != "tensorflow" or not saved_model:
        return tiny  # a JAX run exports from a TensorFlow process (test_backends.py)
    item_index = kind.item_index(model, featurizer, 16)
    assert (item_index is not None) == kind.retrieves
    export_dir = str(tmp_path / "export")
    export.export_saved_model(model, export_dir, kind, featurizer, item_index)
    request = kind.serving_request(featurizer, table)
    served = export.load_serving_fn(export_dir)(**request)
    np.testing.assert_allclose(served["logit"].numpy(), logits, atol=1e-4)
    np.testing.assert_allclose(served["click_probability"].numpy(),
                               1 / (1 + np.exp(-logits)), atol=1e-5)
    tokens_dir = export.export_token_saved_model(model, str(tmp_path / "export_tokens"), kind,
                                                 featurizer, item_index)
    assert (tokens_dir is not None) == kind.uses_text
    if tokens_dir is not None:
        token_request = kind.token_request(
            featurizer, **{k: v.numpy().astype(str).tolist() for k, v in request.items()})
        served = export.load_serving_fn(tokens_dir)(**token_request)
        np.testing.assert_allclose(served["logit"].numpy(), logits, atol=1e-4)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    return tiny


# ------------------------------------------------------------- sequential benchmark files

SEQ_ITEMS, SEQ_USERS, SEQ_LENGTH = 30, 12, 8


def write_sequence_fixture(directory, name="Scientific"):
    """Sequential-benchmark files: user u bought items u, u+1, ..., (mod SEQ_ITEMS) in that
    order; every prefix trains, the last item is the test target, the one before it the
    validation target."""
    rows = {"train": [], "valid": [], "test": []}
    for user in range(SEQ_USERS):
        seq = [(user + k) % SEQ_ITEMS for k in range(SEQ_LENGTH)]
        for end in range(1, SEQ_LENGTH - 2):
            rows["train"].append((user, seq[:end], seq[end]))
        rows["valid"].append((user, seq[:-2], seq[-2]))
        rows["test"].append((user, seq[:-1], seq[-1]))
    os.makedirs(directory, exist_ok=True)
    for split, split_rows in rows.items():
        with open(os.path.join(directory, f"{name}.{split}.inter"), "w") as f:
            f.write("user_id:token\titem_id_list:token_seq\titem_id:token\n")
            f.writelines(f"{u}\t{' '.join(map(str, h))}\t{t}\n" for u, h, t in split_rows)
    with open(os.path.join(directory, f"{name}.item2index"), "w") as f:
        f.writelines(f"P{i:03d}\t{i}\n" for i in range(SEQ_ITEMS))
    with open(os.path.join(directory, f"{name}.text"), "w") as f:
        f.write("item_id:token\ttext:token_seq\n")
        f.writelines(f"P{i:03d}\tpart {i} kit {i % 3}. tools. brand {i % 2}.\n"
                     for i in range(SEQ_ITEMS))
    return str(directory)


def write_tiny_checkpoint(directory, hidden_dim=16, num_layers=1) -> str:
    """A tiny random BERT saved as a keras-hub preset directory (config.json, weights,
    tokenizer vocabulary): what the pretrained paths load in tests, offline."""
    words = sorted({w for i in range(SEQ_ITEMS)
                    for w in f"part {i} kit {i % 3} tools brand {i % 2}".split()} | {"."})
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=RESERVED_TOKENS + words)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=num_layers, num_heads=2,
        hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim, max_sequence_length=64)
    backbone.save_to_preset(str(directory))
    tokenizer.save_to_preset(str(directory))
    return str(directory)


def top_level_imports(path: str) -> set:
    """The top-level modules a script imports (absolute imports only: a relative one fails),
    for the checks that a peer worker runs without this repository's packages."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: no relative imports"
            modules.add(node.module.split(".")[0])
    return modules
