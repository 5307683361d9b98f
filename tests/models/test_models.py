"""The cross-encoder and baselines beyond the model harness every kind runs through
(tests/models/test_harness.py): padding, poolings, backbones, pretrained loading, a
SavedModel read in a fresh process, the forward pass from embeddings."""

import functools
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from bert_recommender.models.baselines import MostPopular
from bert_recommender.models.bert_recommender import BERTRecommender
from bert_recommender.models.layers.text_pair_packer import TextPairPacker
from tests.harness import MINILM_DIR, REPO, require_shared, tensorflow_only, tiny_text_packer
from tests.harness import tiny_bert as harness_tiny_bert
from trainer import kinds
from trainer.serving import export
from trainer.data import input_pipeline

VOCAB = input_pipeline.RESERVED_TOKENS + [f"w{i}" for i in range(95)]  # ~100 tokens
BATCH = 6
tiny_bert = functools.partial(harness_tiny_bert, len(VOCAB))


def make_packer():
    return tiny_text_packer(VOCAB, sequence_length=16, item_max_tokens=6)


def batch(packer):
    rng = np.random.default_rng(0)
    user = [" ".join(f"w{i}" for i in rng.integers(0, 95, 8)) for _ in range(BATCH)]
    item = [" ".join(f"w{i}" for i in rng.integers(0, 95, 4)) for _ in range(BATCH)]
    features = {"user_index": tf.constant(rng.integers(0, 9, BATCH), tf.int32),
                "item_index": tf.constant(rng.integers(0, 11, BATCH), tf.int32)}
    features.update(packer(tf.constant(user), tf.constant(item)))
    labels = tf.constant([1, 0, 1, 0, 0, 1], tf.float32)
    return features, labels, user, item


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
    from bert_recommender.models.layers.pre_ln_bert_backbone import PreLNBertBackbone
    model = tiny_bert(normalize_first=True)
    assert isinstance(model.backbone, PreLNBertBackbone)
    features = make_packer()(tf.constant(["w1 w2"]), tf.constant(["w3"]))
    outputs = model.backbone({**features, "padding_mask": tf.cast(
        features["token_ids"] != 0, tf.int32)})
    assert set(outputs) == {"sequence_output", "pooled_output"}
    assert outputs["sequence_output"].shape == (1, 16, 16)
    # The transformer blocks really normalise first.
    assert all(layer.normalize_first for layer in model.backbone.transformer_layers)


def test_pre_ln_backbone_takes_its_feed_forward_activation_through_a_round_trip():
    from bert_recommender.models.layers.pre_ln_bert_backbone import PreLNBertBackbone
    sizes = dict(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8,
                 intermediate_dim=16, max_sequence_length=6)
    relu = PreLNBertBackbone(activation="relu", **sizes)
    assert relu.transformer_layers[0].activation == keras.activations.relu
    clone = PreLNBertBackbone.from_config(relu.get_config())
    assert clone.activation == "relu"
    inputs = {"token_ids": np.array([[2, 5, 7, 0, 0, 0]]), "segment_ids": np.zeros((1, 6), int),
              "padding_mask": np.array([[1, 1, 1, 0, 0, 0]])}
    clone.set_weights(relu.get_weights())
    np.testing.assert_allclose(clone(inputs)["sequence_output"],
                               relu(inputs)["sequence_output"], atol=1e-6)
    # The same weights through GELU blocks give other states: the activation is used.
    gelu = PreLNBertBackbone(**sizes)
    gelu.set_weights(relu.get_weights())
    assert not np.allclose(gelu(inputs)["sequence_output"], relu(inputs)["sequence_output"])


def test_popularity_orders_by_training_clicks():
    model = MostPopular(num_items=10)
    model.set_counts(np.array([1, 1, 1, 2, 3]), np.array([1, 1, 0, 1, 0]))
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
