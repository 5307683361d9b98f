"""One harness for every model: build, call, one fit step, .keras round-trip, SavedModel."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.baselines import MatrixFactorization, MostPopular
from models.bert_recommender import BERTRecommender
from models.layers.text_pair_packer import TextPairPacker
from tests.conftest import BACKEND, MINILM_DIR, REPO, require_shared, tensorflow_only
from trainer import kinds
from trainer.serving import export
from trainer.data import input_pipeline

VOCAB = input_pipeline.RESERVED_TOKENS + [f"w{i}" for i in range(95)]  # ~100 tokens
BATCH = 6


def tiny_bert(**kwargs):
    return BERTRecommender.from_sizes(vocabulary_size=len(VOCAB), num_layers=1, num_heads=2,
                                      hidden_dim=16, intermediate_dim=32,
                                      max_sequence_length=16, **kwargs)


def tiny_popularity():
    model = MostPopular(num_items=10)
    model.set_counts(np.array([1, 1, 1, 2, 3]), np.array([1, 1, 0, 1, 0]))
    return model


MODELS = {
    "bert": tiny_bert,
    "bert_pre_ln_first": lambda: tiny_bert(normalize_first=True, pooling="first"),
    "bert_mean": lambda: tiny_bert(pooling="mean"),
    "mf": lambda: MatrixFactorization(num_users=8, num_items=10, embedding_dim=4),
    "popularity": tiny_popularity,
}


def make_packer():
    tokenizer = input_pipeline.make_tokenizer(vocabulary=VOCAB)
    return TextPairPacker(tokenizer, sequence_length=16, item_max_tokens=6)


def batch(packer):
    rng = np.random.default_rng(0)
    user = [" ".join(f"w{i}" for i in rng.integers(0, 95, 8)) for _ in range(BATCH)]
    item = [" ".join(f"w{i}" for i in rng.integers(0, 95, 4)) for _ in range(BATCH)]
    features = {"user_index": tf.constant(rng.integers(0, 9, BATCH), tf.int32),
                "item_index": tf.constant(rng.integers(0, 11, BATCH), tf.int32)}
    features.update(packer(tf.constant(user), tf.constant(item)))
    labels = tf.constant([1, 0, 1, 0, 0, 1], tf.float32)
    return features, labels, user, item


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_harness(name, tmp_path):
    packer = make_packer()
    features, labels, user, item = batch(packer)
    model = MODELS[name]()
    logits = model(features)
    assert logits.shape == (BATCH,)

    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.fit(features, labels, epochs=1, batch_size=BATCH, verbose=0)
    after = [w.numpy() for w in model.trainable_weights]
    if name == "popularity":
        assert not model.trainable_weights
    else:
        assert all(not np.allclose(a, b) for a, b in zip(before, after) if a.size > 1) or \
            any(not np.allclose(a, b) for a, b in zip(before, after))

    expected = model.predict(features, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(features, verbose=0), expected, atol=1e-6)
    if BACKEND != "tensorflow":
        return  # a JAX run exports from a TensorFlow process (tests/trainer/test_backends.py)

    export_dir = str(tmp_path / "export")
    is_text = name.startswith("bert")
    kind = kinds.kind_class("cross_encoder" if is_text else name)()
    export.export_saved_model(model, export_dir, kind, packer if is_text else None)
    serve = export.load_serving_fn(export_dir)
    if is_text:
        out = serve(user_text=tf.constant(user), item_text=tf.constant(item))
        tokens = export.load_serving_fn(export_dir, "serve_tokens")(
            token_ids=features["token_ids"], segment_ids=features["segment_ids"])
        np.testing.assert_allclose(tokens["logit"].numpy(), expected, atol=1e-5)
    else:
        out = serve(user_index=features["user_index"], item_index=features["item_index"])
    np.testing.assert_allclose(out["logit"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out["click_probability"].numpy(),
                               1 / (1 + np.exp(-expected)), atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_bert_logits_ignore_padding():
    packer = make_packer()
    model = tiny_bert()
    features = packer(tf.constant(["w1 w2"]), tf.constant(["w3"]))
    longer = {k: tf.pad(v, [[0, 0], [0, 0]]) for k, v in features.items()}
    # Changing what sits in padded positions' segment ids must not change the score.
    noisy = dict(longer, segment_ids=tf.where(longer["token_ids"] == 0, 1,
                                              longer["segment_ids"]))
    np.testing.assert_allclose(np.asarray(model(longer)), np.asarray(model(noisy)), atol=1e-6)


def test_pooling_choices_and_frozen_pooler():
    first = tiny_bert(pooling="first")
    assert not first.backbone.pooled_dense.trainable  # unused: kept out of the optimizer
    assert tiny_bert().backbone.pooled_dense.trainable
    with pytest.raises(ValueError, match="pooling"):
        tiny_bert(pooling="max")


def test_pre_ln_backbone_is_a_drop_in_for_bert_backbone():
    from models.layers.pre_ln_bert_backbone import PreLNBertBackbone
    model = tiny_bert(normalize_first=True)
    assert isinstance(model.backbone, PreLNBertBackbone)
    features = make_packer()(tf.constant(["w1 w2"]), tf.constant(["w3"]))
    outputs = model.backbone({**features, "padding_mask": tf.cast(
        features["token_ids"] != 0, tf.int32)})
    assert set(outputs) == {"sequence_output", "pooled_output"}
    assert outputs["sequence_output"].shape == (1, 16, 16)
    # The transformer blocks really normalise first.
    assert all(layer.normalize_first for layer in model.backbone.transformer_layers)


def test_popularity_orders_by_training_clicks():
    model = tiny_popularity()
    scores = np.asarray(model({"item_index": tf.constant([1, 2, 3, 0])}))
    # item 1 clicked twice, item 2 once, item 3 never, unknown (0) never.
    assert scores[0] > scores[1] > scores[2] == scores[3]


def test_pretrained_minilm_loads_offline():
    path = require_shared(MINILM_DIR)
    model = BERTRecommender.from_pretrained(path)
    assert model.backbone.num_layers == 6 and model.backbone.hidden_dim == 384
    tokenizer = input_pipeline.make_tokenizer(pretrained=path)
    packer = TextPairPacker(tokenizer, sequence_length=32, item_max_tokens=12)
    features = packer(tf.constant(["i want to buy a new laptop"]),
                      tf.constant(["a lightweight laptop with long battery life"]))
    assert features["token_ids"].numpy()[0, 0] == tokenizer.token_to_id("[CLS]")
    assert model(features).shape == (1,)
    # The pretrained embeddings are really loaded: same values as in the safetensors file.
    from safetensors.numpy import load_file
    weights = load_file(os.path.join(path, "model.safetensors"))
    key = [k for k in weights if k.endswith("word_embeddings.weight")][0]
    np.testing.assert_allclose(model.backbone.token_embedding.embeddings.numpy(),
                               weights[key], atol=1e-6)


def test_pretrained_rejects_a_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        BERTRecommender.from_pretrained(str(tmp_path))


@tensorflow_only
def test_saved_model_matches_in_process_model_in_a_fresh_process(tmp_path):
    packer = make_packer()
    features, _, user, item = batch(packer)
    model = tiny_bert()
    expected = keras.ops.convert_to_numpy(model.click_probability(features))
    export.export_saved_model(model, str(tmp_path / "export"),
                              kinds.kind_class("cross_encoder")(), packer)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        import tensorflow_text  # registers the tokenizer ops
        loaded = tf.saved_model.load({str(tmp_path / 'export')!r})
        out = loaded.signatures["serving_default"](user_text=tf.constant({user!r}),
                                                   item_text=tf.constant({item!r}))
        diff = np.abs(out["click_probability"].numpy() - np.load({str(tmp_path / 'expected.npy')!r}))
        print("MAXDIFF", diff.max())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    max_diff = float(result.stdout.split("MAXDIFF")[1])
    assert max_diff <= 1e-5


@pytest.mark.parametrize("normalize_first", [False, True])
@pytest.mark.parametrize("pooling", ["cls", "first", "mean"])
def test_logit_from_token_embeddings_reproduces_call(pooling, normalize_first):
    """The explainers' forward pass from embeddings must be the model, not an imitation."""
    model = BERTRecommender.from_sizes(vocabulary_size=50, num_layers=2, num_heads=2,
                                       hidden_dim=16, intermediate_dim=32, pooling=pooling,
                                       normalize_first=normalize_first)
    ids = np.array([[2, 7, 8, 3, 9, 3, 0, 0], [2, 5, 3, 6, 6, 6, 3, 0]], dtype="int32")
    segments = np.array([[0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1, 1, 0]], dtype="int32")
    expected = np.asarray(model({"token_ids": ids, "segment_ids": segments}))
    logits, scores = model.logit_from_token_embeddings(
        model.token_embeddings(ids), segments, model.padding_mask(ids),
        return_attention_scores=True)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-6)
    assert [tuple(s.shape) for s in scores] == [(2, 2, 8, 8)] * 2
