"""``model.kind: frozen_two_tower``: the catalogue encoded once by a (tiny, random,
written-here) pretrained checkpoint, cached with a fingerprint, trained through the one
training library on sequential-benchmark files, and served from raw strings, catalogue
texts from the cache and other texts through the frozen encoder in the SavedModel."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.harness import REPO, tensorflow_only, write_sequence_fixture, write_tiny_checkpoint
from trainer import config as config_lib
from trainer import runs
from trainer.errors import ConfigError
from trainer.kinds import text_vectors
from trainer.serving import export
from trainer.training import train_lib

TEXTS = ["part 1 kit 1. tools.", "brand 0 kit 2", "", "part 7"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_the_vectors_are_cached_under_their_fingerprint(checkpoint, tmp_path):
    vectors, info = text_vectors.cached_text_vectors(TEXTS, checkpoint, 12, "mean",
                                                     cache_dir=str(tmp_path))
    assert vectors.shape == (4, 16) and not info["reused"] and os.path.exists(info["path"])
    again, info2 = text_vectors.cached_text_vectors(TEXTS, checkpoint, 12, "mean",
                                                    cache_dir=str(tmp_path))
    assert info2["reused"] and info2["encode_seconds"] == 0.0
    np.testing.assert_array_equal(again, vectors)
    # Other texts, another token limit or pooling: another key, encoded again.
    for texts, tokens, pooling in [(TEXTS[::-1], 12, "mean"), (TEXTS, 4, "mean"),
                                   (TEXTS, 12, "first")]:
        _, other = text_vectors.cached_text_vectors(texts, checkpoint, tokens, pooling,
                                                    cache_dir=str(tmp_path))
        assert not other["reused"] and other["fingerprint"] != info["fingerprint"]
    assert len(os.listdir(tmp_path / text_vectors.CACHE_DIR)) == 4


def test_a_changed_checkpoint_changes_the_fingerprint(checkpoint, tmp_path):
    before = text_vectors.fingerprint(checkpoint, TEXTS, 12, "mean")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(checkpoint):
        if os.path.isfile(os.path.join(checkpoint, name)):
            with open(os.path.join(checkpoint, name), "rb") as src:
                (copy / name).write_bytes(src.read())
    assert text_vectors.fingerprint(str(copy), TEXTS, 12, "mean") == before
    with open(copy / "config.json", "a") as f:
        f.write(" ")
    assert text_vectors.fingerprint(str(copy), TEXTS, 12, "mean") != before


def test_a_damaged_or_foreign_cache_file_is_encoded_again(checkpoint, tmp_path):
    vectors, info = text_vectors.cached_text_vectors(TEXTS, checkpoint, 12, "mean",
                                                     cache_dir=str(tmp_path))
    with open(info["path"], "wb") as f:
        f.write(b"not an npz")
    again, info2 = text_vectors.cached_text_vectors(TEXTS, checkpoint, 12, "mean",
                                                    cache_dir=str(tmp_path))
    assert not info2["reused"]
    np.testing.assert_allclose(again, vectors, atol=1e-6)
    np.savez(info["path"], vectors=np.zeros((4, 16), np.float32), fingerprint=np.array("x"))
    _, info3 = text_vectors.cached_text_vectors(TEXTS, checkpoint, 12, "mean",
                                                cache_dir=str(tmp_path))
    assert not info3["reused"]


def _config(data_dir, checkpoint, *overrides):
    return config_lib.load_config(os.path.join(REPO, "configs", "sequences.yaml"), [
        f"data.data_dir={data_dir}", "model.kind=frozen_two_tower",
        f"model.pretrained={checkpoint}", "model.pooling=mean", "model.hidden_dim=16",
        "model.intermediate_dim=32", "model.user_layers=1", "model.item_ids=true",
        "model.adapter=moe", "model.adapter_experts=2", "train.loss=full_softmax",
        "train.epochs=2", "train.batch_size=8", "train.eval_batch_size=64",
        "data.item_max_tokens=12", "data.sequences.eval_negatives=5", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, checkpoint):
    base = tmp_path_factory.mktemp("frozen")
    data_dir = write_sequence_fixture(base / "data")
    cfg = _config(data_dir, checkpoint)
    run_dir = str(base / "run")
    return cfg, run_dir, train_lib.train(cfg, run_dir)


def test_a_run_caches_the_vectors_its_model_reads(trained):
    cfg, run_dir, metrics = trained
    assert metrics["train"]["epochs_run"] == 2
    assert np.isfinite(metrics["test"]["ndcg@10"])
    cached = os.listdir(os.path.join(run_dir, text_vectors.CACHE_DIR))
    assert len(cached) == 1
    with np.load(os.path.join(run_dir, text_vectors.CACHE_DIR, cached[0])) as data:
        vectors = data["vectors"]
    run = runs.open_run(run_dir)
    table = np.asarray(run.model.text_table)
    assert table.shape == (len(vectors) + 1, 16) and not table[0].any()
    np.testing.assert_array_equal(table[1:], vectors)  # row i = catalogue item i
    with open(os.path.join(run_dir, runs.FEATURIZER)) as f:
        encoding = json.load(f)["encoding"]
    assert encoding["fingerprint"].startswith(cached[0].split(".")[0])
    assert encoding["reused"] is False and encoding["encode_seconds"] >= 0


@tensorflow_only
def test_the_export_reads_cached_vectors_and_encodes_new_texts(trained):
    _, run_dir, _ = trained
    run = runs.open_run(run_dir)
    featurizer, model = run.featurizer, run.model
    texts, ids = featurizer.item_texts, featurizer.item_ids
    new_text = "part 3 kit 0. brand 1. tools. part 9"
    raw = {"query": tf.constant(["", ""]),
           "history_text": tf.constant([[texts[1], texts[2], ""], [texts[4], "", ""]]),
           "history_ids": tf.constant([[ids[1], ids[2], ""], [ids[4], "", ""]]),
           "item_text": tf.constant([texts[3], new_text]),
           "item_id": tf.constant([ids[3], "a-new-item"])}
    served = export.load_serving_fn(os.path.join(run_dir, "export"))(**raw)["logit"].numpy()
    # In process: the catalogue candidate from its table row, the new one through the
    # frozen encoder (an extra vector), with no id.
    x = featurizer.from_text(raw["query"], raw["history_text"], raw["item_text"],
                             history_ids=raw["history_ids"], item_ids=raw["item_id"])
    assert x["item_text_index"].numpy()[0] == 3
    assert x["item_text_index"].numpy()[1] == len(texts)  # the first row past the table
    assert x["item_index"].numpy()[1] == 0
    np.testing.assert_allclose(served, np.asarray(model(x)), atol=1e-4)
    extra = np.asarray(x["extra_text_vectors"])
    np.testing.assert_allclose(extra[0], featurizer.encoder.encode([new_text])[0], atol=1e-5)
    # A request about catalogue texts alone needs no encoder pass (nor the checkpoint).
    y = featurizer.from_text(raw["query"], raw["history_text"], tf.constant(texts[3:5]))
    assert "extra_text_vectors" not in y


def test_the_kind_refuses_what_it_cannot_train(tmp_path, checkpoint):
    data_dir = write_sequence_fixture(tmp_path / "data")
    for overrides, match in [(["model.pretrained=''"], "model.pretrained"),
                             (["model.adapter=mlp"], "model.adapter"),
                             (["model.adapter_experts=0"], "model.adapter_experts"),
                             (["model.adapter_dropout=1.0"], "model.adapter_dropout"),
                             (["model.hidden_dim=15"], "model.hidden_dim")]:
        with pytest.raises(ConfigError, match=match):
            train_lib.train(_config(data_dir, checkpoint, *overrides), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_recommend_retrieves_from_the_cached_item_vectors(trained):
    from trainer.serving.recommend_lib import Recommender

    _, run_dir, _ = trained
    recommender = Recommender(run_dir)
    ids = recommender.featurizer.item_ids
    history = [ids[3], ids[2], ids[1]]
    top = recommender.recommend([""], [history], k=5)[0]
    assert len(top) == 5 and not {r["item_id"] for r in top} & set(history)
    logits = [r["logit"] for r in top]
    assert logits == sorted(logits, reverse=True)
    # The same ranking as the model's own catalogue scores for that user.
    texts = [recommender.featurizer.item_texts[recommender.position[i] + 1] for i in history]
    x = recommender.featurizer.from_text(tf.constant([""]), tf.constant([texts]),
                                         tf.constant([""]), history_ids=tf.constant([history]))
    scores = np.asarray(recommender.model.score_matrix(
        recommender.model.user_state(x), recommender.index.vectors,
        recommender.index.id_index))[0]
    assert top[0]["logit"] == pytest.approx(float(np.max(np.delete(
        scores, [recommender.position[i] for i in history]))), abs=1e-4)


def test_explanations_run_through_the_frozen_encoder(trained):
    """Packed rows score what the model scores (catalogue texts from its table, the view
    re-encoding them from word-piece embeddings), integrated gradients are complete
    through the checkpoint, and ``explain`` writes its outputs for the run."""
    from bert_recommender.explainability import token_attributions
    from bert_recommender.explainability.history_attributions import Case
    from trainer.responsible import explain_lib

    cfg, run_dir, _ = trained
    run = runs.open_run(run_dir)
    featurizer, model = run.featurizer, run.model
    texts, ids = featurizer.item_texts, featurizer.item_ids
    scorer, compose = run.kind.explanation_scorer(cfg, model, featurizer)
    case = Case(query="", history=[(ids[i], texts[i]) for i in (1, 2, 3)],
                candidate_id=ids[5], candidate_text=texts[5], candidate_title=texts[5],
                others=[(ids[6], texts[6])], history_texts=[texts[i] for i in (1, 2, 3)])
    scorer.bind(case)
    rows, segments = scorer.pack([case.user_text(compose)], [case.candidate_text])
    recent = [3, 2, 1] + [0] * (featurizer.max_history - 3)
    x = featurizer.from_text(tf.constant([""]), tf.constant([[texts[i] for i in recent]]),
                             tf.constant([texts[5]]),
                             history_ids=tf.constant([[ids[i] for i in recent]]),
                             item_ids=tf.constant([ids[5]]))
    want = float(np.asarray(model(x))[0])
    np.testing.assert_allclose(scorer.logits(rows, segments)[0], want, atol=1e-4)
    # Erasing words changes the vector the model reads (the text is re-encoded).
    words = scorer.words(rows[0], segments[0], has_query=True)
    erased = np.array([[w.segment == "item" for w in words]])
    assert erased.any()
    e_rows, e_segments = scorer.erase(rows[0], segments[0], words, erased)
    assert abs(scorer.logits(e_rows, e_segments)[0] - want) > 1e-6
    # Scoring encodes each distinct text once; the gradient path encodes every slot from
    # its embeddings: the same logits.
    both = np.concatenate([rows, e_rows]), np.concatenate([segments, e_segments])
    view = scorer.model
    from_embeddings = view.logit_from_token_embeddings(
        view.token_embeddings(tf.constant(both[0])), tf.constant(both[1]),
        tf.constant(both[0]))
    np.testing.assert_allclose(scorer.logits(*both), np.asarray(from_embeddings), atol=1e-5)
    ig = token_attributions.integrated_gradients(scorer, rows[0], segments[0], steps=64)
    assert ig["completeness_error"] < 0.02, ig["completeness_error"]
    per_word = token_attributions.to_words(ig["attributions"], words)
    assert np.abs([v for v, w in zip(per_word, words) if w.segment == "user"]).max() > 0

    summary = explain_lib.explain(run_dir, num_examples=2, progress=False, methods=[
        "integrated_gradients", "occlusion", "leave_one_out"])
    assert sorted(os.listdir(os.path.join(run_dir, "explanations"))) == [
        "explanations.jsonl", "faithfulness.json", "report.html"]
    assert summary["methods"]["integrated_gradients"]["examples"] == 2
    # Trained with a softmax: the logit is explained (its sigmoid is no probability), and
    # occlusion differences are logit differences.
    assert scorer.target == "logit" and summary["explained_quantity"].startswith("logit")
    occluded = token_attributions.occlusion(scorer, rows[0], segments[0], words)
    e_rows, e_segments = scorer.erase(rows[0], segments[0], words,
                                      np.eye(len(words), dtype=bool)[:1])
    assert occluded[0] == pytest.approx(
        want - scorer.logits(e_rows, e_segments)[0], abs=1e-4)
    assert "leave_one_out" in summary["history_methods"]


@tensorflow_only
def test_a_run_fine_tunes_the_top_layer_over_cached_states(tmp_path):
    """``model.text_trainable_layers=1``: the cache holds the word-piece states below the
    checkpoint's top layer (float16), the model trains its copy of that layer, and the
    export and the explanations read states through it as training did."""
    from bert_recommender.explainability.history_attributions import Case

    checkpoint = write_tiny_checkpoint(tmp_path / "two_layers", num_layers=2)
    data_dir = write_sequence_fixture(tmp_path / "data")
    cfg = _config(data_dir, checkpoint, "model.text_trainable_layers=1")
    run_dir = str(tmp_path / "run")
    metrics = train_lib.train(cfg, run_dir)
    assert np.isfinite(metrics["test"]["ndcg@10"])
    (cached,) = os.listdir(os.path.join(run_dir, text_vectors.CACHE_DIR))
    with np.load(os.path.join(run_dir, text_vectors.CACHE_DIR, cached)) as data:
        states = data["vectors"]
    assert states.dtype == np.float16 and states.shape[1] == 12 * 16
    run = runs.open_run(run_dir)
    featurizer, model = run.featurizer, run.model
    np.testing.assert_array_equal(np.asarray(model.text_table)[1:], states.astype(np.float32))
    start = featurizer.encoder.top_layers[0].get_weights()
    trained = model.text_adapter.top_layers[0].get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(start, trained)) > 1e-4  # it trained

    texts, ids = featurizer.item_texts, featurizer.item_ids
    new_text = "part 3 kit 0. brand 1. tools. part 9"
    raw = {"query": tf.constant([""]), "history_text": tf.constant([[texts[1], texts[2], ""]]),
           "history_ids": tf.constant([[ids[1], ids[2], ""]]),
           "item_text": tf.constant([new_text]), "item_id": tf.constant(["a-new-item"])}
    served = export.load_serving_fn(os.path.join(run_dir, "export"))(**raw)["logit"].numpy()
    x = featurizer.from_text(raw["query"], raw["history_text"], raw["item_text"],
                             history_ids=raw["history_ids"], item_ids=raw["item_id"])
    assert np.asarray(x["extra_text_vectors"]).shape == (1, 12 * 16)
    np.testing.assert_allclose(served, np.asarray(model(x)), atol=1e-3)

    scorer, compose = run.kind.explanation_scorer(cfg, model, featurizer)
    case = Case(query="", history=[(ids[i], texts[i]) for i in (1, 2)],
                candidate_id=ids[5], candidate_text=texts[5], candidate_title=texts[5],
                others=[(ids[6], texts[6])], history_texts=[texts[i] for i in (1, 2)])
    scorer.bind(case)
    rows, segments = scorer.pack([case.user_text(compose)], [case.candidate_text])
    recent = [2, 1] + [0] * (featurizer.max_history - 2)
    y = featurizer.from_text(tf.constant([""]), tf.constant([[texts[i] for i in recent]]),
                             tf.constant([texts[5]]),
                             history_ids=tf.constant([[ids[i] for i in recent]]),
                             item_ids=tf.constant([ids[5]]))
    # The table's states are float16-rounded; the view's are recomputed in float32.
    np.testing.assert_allclose(scorer.logits(rows, segments)[0], float(np.asarray(model(y))[0]),
                               atol=2e-2)

    for overrides, match in [(["model.text_trainable_layers=3"], "more than the 2"),
                             (["model.text_trainable_layers=-1"], ">= 0"),
                             (["model.text_trainable_layers=1", "model.pooling=cls"],
                              "model.pooling")]:
        with pytest.raises(ConfigError, match=match):
            train_lib.train(_config(data_dir, checkpoint, *overrides), str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
