"""trainer/evaluation/run_reports.py: PR curves, histograms, text tables, projector and PNGs, read back
from what was written and checked against hand-computed values."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins import projector
from tensorboard.plugins.pr_curve import plugin_data_pb2
from tensorboard.plugins.pr_curve import summary as pr_curve_summary

from bert_recommender.models.baselines import MatrixFactorization, MostPopular
from tests.harness import WORDS, make_model, make_packer
from trainer import kinds
from trainer.data.input_pipeline import IdVocabulary
from trainer.evaluation import run_reports
from trainer.data.canonical import Item

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Six rows by hand: at threshold 0.5 the rows predicted positive are 0.9 (1), 0.8 (0) and
# 0.55 (1): TP 2, FP 1, TN 2 (0.2, 0.05), FN 1 (0.3); precision = recall = 2/3.
PR_LABELS = np.array([1, 0, 1, 1, 0, 0])
PR_PROBABILITIES = np.array([0.9, 0.8, 0.55, 0.3, 0.2, 0.05])

# Calibration by hand, 5 equal-width bins:
#   [0, .2): .05 .15 .12, labels 0 0 1 -> mean .10667, fraction 1/3, |1 - .32| = .68
#   [.2, .4): empty
#   [.4, .6): .45 .55, labels 0 1 -> mean .5, fraction .5, |1 - 1.0| = 0
#   [.6, .8): .62 .68, labels 1 0 -> mean .65, fraction .5, |1 - 1.3| = .3
#   [.8, 1]: .91 .95 .99, labels 1 1 1 -> mean .95, fraction 1, |3 - 2.85| = .15
#   ECE = (.68 + 0 + .3 + .15) / 10 = .113
CAL_PROBABILITIES = np.array([0.05, 0.15, 0.12, 0.45, 0.55, 0.62, 0.68, 0.91, 0.95, 0.99])
CAL_LABELS = np.array([0, 0, 1, 0, 1, 1, 0, 1, 1, 1], np.float32)
CAL_BINS = [(3, 0.32 / 3, 1 / 3), (0, None, None), (2, 0.5, 0.5), (2, 0.65, 0.5),
            (3, 0.95, 1.0)]


@pytest.fixture(scope="module")
def packer():
    """One packer for the module: each TextPairPacker traces its tokenizer graph on first
    use (seconds on 2 cores), and again for a second input shape, so every call here packs
    PACK rows."""
    return make_packer(sequence_length=16, item_max_tokens=6)


PACK = 4


def pack(packer, user_text, item_text):
    """``packer`` over the rows in chunks of PACK (the last one padded), concatenated."""
    chunks = []
    for start in range(0, len(user_text), PACK):
        users = list(user_text[start:start + PACK])
        items = list(item_text[start:start + PACK])
        pad = PACK - len(users)
        packed = packer(tf.constant(users + [""] * pad), tf.constant(items + [""] * pad))
        chunks.append({k: v[:len(users)] for k, v in packed.items()})
    return {k: tf.concat([c[k] for c in chunks], axis=0) for k in chunks[0]}


def logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p) - np.log1p(-p)


def read_events(log_dir):
    """{tag: [(step, value, plugin_name, plugin_content)]} from every events file."""
    out = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(
                    (event.step, tf.make_ndarray(value.tensor),
                     value.metadata.plugin_data.plugin_name,
                     value.metadata.plugin_data.content))
    return out


def text_of(entry):
    return entry[1].item().decode("utf-8")


def hand_pr(labels, probabilities, threshold):
    predicted = probabilities >= threshold
    tp = np.sum(predicted & (labels == 1))
    fp = np.sum(predicted & (labels == 0))
    fn = np.sum(~predicted & (labels == 1))
    tn = np.sum(~predicted & (labels == 0))
    precision = tp / (tp + fp) if tp + fp else 0.0
    return [tp, fp, tn, fn, precision, tp / (tp + fn)]


# ---------------------------------------------------------------------------------------
# PR curve
# ---------------------------------------------------------------------------------------

def test_pr_curve_written_and_read_back_matches_hand_computation(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        run_reports.write_pr_curve("pr_curve", PR_LABELS, PR_PROBABILITIES, step=3,
                                   num_thresholds=11)
    writer.close()
    [(step, tensor, plugin, content)] = read_events(str(tmp_path))["pr_curve"]
    assert step == 3 and plugin == "pr_curves" and tensor.shape == (6, 11)
    assert plugin_data_pb2.PrCurvePluginData.FromString(content).num_thresholds == 11
    np.testing.assert_allclose(tensor[:, 5], [2, 1, 2, 1, 2 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(tensor[:, 0], [3, 3, 0, 0, 0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(tensor[:, 10], [0, 0, 3, 3, 0, 0], atol=1e-6)
    for i in range(11):
        np.testing.assert_allclose(tensor[:, i], hand_pr(PR_LABELS, PR_PROBABILITIES, i / 10),
                                   rtol=1e-6, atol=1e-7)
    # Same tensor as TensorBoard's own (TF1-style) protobuf writer.
    reference = pr_curve_summary.pb("pr", PR_LABELS.astype(bool), PR_PROBABILITIES,
                                    num_thresholds=11)
    np.testing.assert_allclose(tensor, tf.make_ndarray(reference.value[0].tensor), rtol=1e-6)


def test_validation_curves_callback_in_fit(tmp_path, packer):
    model = make_model(num_layers=1)
    rng = np.random.default_rng(0)
    n = 20
    features = pack(packer, [" ".join(rng.choice(WORDS, 4)) for _ in range(n)],
                    [" ".join(rng.choice(WORDS, 3)) for _ in range(n)])
    labels = (np.arange(n) % 3 == 0).astype(np.float32)
    # Pre-packed features: tokenizing inside tf.data would trace the packer again.
    train = tf.data.Dataset.from_tensor_slices((features, labels)).shuffle(n, seed=0).batch(5)
    val_features = tf.data.Dataset.from_tensor_slices(features).batch(8)
    log_dir = str(tmp_path / "tensorboard" / "validation")
    curves = run_reports.ValidationCurves(log_dir, val_features, labels, num_thresholds=21)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(train.repeat(), epochs=2, steps_per_epoch=4, callbacks=[curves], shuffle=False,
              verbose=0)

    events = read_events(log_dir)
    assert [e[0] for e in events["pr_curve"]] == [0, 1]
    assert [e[0] for e in events["predicted_probability"]] == [0, 1]
    assert {"predicted_probability/label_0", "predicted_probability/label_1"} <= set(events)
    # The last curve is the one of the fitted model's predictions.
    logits = np.asarray(model.predict(val_features, verbose=0)).reshape(-1)
    expected = run_reports.pr_curve_data(
        labels, run_reports.probabilities_from_logits(logits), 21)
    np.testing.assert_allclose(events["pr_curve"][1][1], expected, rtol=1e-5, atol=1e-6)
    # Histogram buckets ([left, right, count]) count every row.
    assert events["predicted_probability"][1][1][:, 2].sum() == pytest.approx(n)
    assert events["predicted_probability/label_1"][1][1][:, 2].sum() == pytest.approx(7)


def test_validation_curves_with_callable_and_every_n_epochs(tmp_path):
    labels = PR_LABELS.astype(np.float32)
    curves = run_reports.ValidationCurves(str(tmp_path), lambda model: logit(PR_PROBABILITIES),
                                          labels, num_thresholds=11, every_n_epochs=2)
    for epoch in range(4):
        curves.on_epoch_end(epoch)
    curves.on_train_end()
    events = read_events(str(tmp_path))
    assert [e[0] for e in events["pr_curve"]] == [1, 3]
    np.testing.assert_allclose(events["pr_curve"][0][1][:, 5], [2, 1, 2, 1, 2 / 3, 2 / 3],
                               rtol=1e-6)
    wrong = run_reports.ValidationCurves(str(tmp_path), lambda model: np.zeros(3), labels)
    with pytest.raises(ValueError, match="3 predictions for 6 labels"):
        wrong.on_epoch_end(0)


# ---------------------------------------------------------------------------------------
# Calibration, examples, write_run_reports
# ---------------------------------------------------------------------------------------

def test_calibration_bins_match_hand_computation():
    result = run_reports.calibration_bins(CAL_LABELS, CAL_PROBABILITIES, num_bins=5)
    assert result["ece"] == pytest.approx(0.113, abs=1e-12)
    for got, (count, mean, fraction) in zip(result["bins"], CAL_BINS):
        assert got["count"] == count
        if count:
            assert got["mean_probability"] == pytest.approx(mean, abs=1e-12)
            assert got["fraction_positive"] == pytest.approx(fraction, abs=1e-12)
        else:
            assert got["mean_probability"] is None and got["fraction_positive"] is None
    assert [b["lower"] for b in result["bins"]] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])

    quantile = run_reports.calibration_bins(CAL_LABELS, CAL_PROBABILITIES, 5, "quantile")
    # Ten distinct values, five quantile bins: two rows each, in sorted order.
    assert [b["count"] for b in quantile["bins"]] == [2, 2, 2, 2, 2]
    assert quantile["bins"][0]["mean_probability"] == pytest.approx((0.05 + 0.12) / 2)
    assert quantile["bins"][0]["fraction_positive"] == pytest.approx(0.5)
    # Bins {.05 .12} {.15 .45} {.55 .62} {.68 .91} {.95 .99} with label sums 1 0 2 1 2:
    # |sum(y) - sum(p)| = .83, .6, .83, .59, .06.
    assert quantile["ece"] == pytest.approx((0.83 + 0.6 + 0.83 + 0.59 + 0.06) / 10)


def test_select_examples_top_bottom_random():
    logits = np.array([0.3, 2.0, -1.0, 5.0, -3.0, 0.0, 1.0, -0.5, 0.7, 4.0, -2.0, 0.1])
    chosen = run_reports.select_examples(logits, 8, seed=1)
    assert [r for k, r in chosen if k == "top"] == [3, 9, 1]
    assert [r for k, r in chosen if k == "bottom"] == [4, 10, 2]
    randoms = [r for k, r in chosen if k == "random"]
    assert len(randoms) == 2 and not set(randoms) & {3, 9, 1, 4, 10, 2}
    assert chosen == run_reports.select_examples(logits, 8, seed=1)
    assert len(run_reports.select_examples(logits[:2], 8)) == 2


@pytest.fixture
def reports(tmp_path):
    import matplotlib.pyplot as plt

    model_dir = str(tmp_path / "run")
    open_before = plt.get_fignums()
    logits = np.append(logit(CAL_PROBABILITIES), np.nan)  # one diverged row, left out
    labels = np.append(CAL_LABELS, 1.0)
    user_text = [f"user {i} ; title|with pipe\nand newline" for i in range(11)]
    item_text = [f"item {i}" for i in range(11)]
    embeddings = run_reports.ItemEmbeddings(
        item_ids=["a", "b", "c"], titles=["Plain", "Tab\there", "Line\nbreak"],
        vectors=np.arange(12, dtype=np.float32).reshape(3, 4), description="test vectors")
    result = run_reports.write_run_reports(
        model_dir, labels=labels, logits=logits, user_text=user_text, item_text=item_text,
        embeddings=embeddings, num_text_examples=5, num_bins=5, step=2)
    assert plt.get_fignums() == open_before  # no figure left open
    return model_dir, result, embeddings


def test_write_run_reports_text_calibration_and_pngs(reports):
    model_dir, result, _ = reports
    json.dumps(result)  # goes into a JSON file as is
    assert result["nan_predictions"] == 1
    assert result["calibration"]["examples"] == 10
    assert result["calibration"]["ece"] == pytest.approx(0.113, abs=1e-9)
    assert [b["count"] for b in result["calibration"]["bins"]] == [3, 0, 2, 2, 3]

    events = read_events(os.path.join(model_dir, "tensorboard", "validation"))
    [examples] = events["scored_examples"]
    assert examples[0] == 2 and examples[2] == "text"
    lines = text_of(examples).splitlines()
    assert lines[0].startswith("| kind | rank | probability")
    assert len(lines) == 2 + 5
    # Top row: the highest probability (.99, row 9), escaped pipe, newline folded.
    assert lines[2].startswith("| top | 1 of 10 | 0.9900 |")
    assert "user 9 ; title\\|with pipe and newline" in lines[2]
    assert lines[4].startswith("| bottom | 10 of 10 | 0.0500 |")
    assert lines[6].startswith("| random |")
    # 5 rows: two top (.99, .95), two bottom (.05, .12), one random.
    assert result["text_examples"][:4] == [9, 8, 0, 2]
    assert result["text_examples"][4] not in (9, 8, 0, 2, 10)
    assert "ECE = 0.1130 over 10 rows" in text_of(events["calibration"][0])
    assert events["pr_curve"][0][0] == 2
    assert events["predicted_probability"][0][1][:, 2].sum() == pytest.approx(10)

    for key, name in (("calibration_png", "calibration.png"),
                      ("score_histogram_png", "score_histogram.png")):
        assert result[key] == os.path.join(model_dir, name)
        with open(result[key], "rb") as f:
            data = f.read()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert not glob.glob(os.path.join(model_dir, "*.tmp-*"))


def test_write_run_reports_projector(reports):
    model_dir, result, embeddings = reports
    log_dir = os.path.join(model_dir, "tensorboard", "projector")
    assert result["projector"] == log_dir
    config = projector.ProjectorConfig()
    with open(os.path.join(log_dir, "projector_config.pbtxt")) as f:
        text_format.Parse(f.read(), config)
    [embedding] = config.embeddings
    assert embedding.tensor_name == run_reports.PROJECTOR_TENSOR
    assert embedding.metadata_path == "metadata.tsv"
    with open(os.path.join(log_dir, "metadata.tsv")) as f:
        assert f.read().split("\n") == ["item_id\ttitle", "a\tPlain", "b\tTab here",
                                        "c\tLine break", ""]
    checkpoint = tf.train.latest_checkpoint(log_dir)
    assert checkpoint == os.path.join(log_dir, "embedding.ckpt-1")
    np.testing.assert_array_equal(
        tf.train.load_checkpoint(checkpoint).get_tensor(run_reports.PROJECTOR_TENSOR),
        embeddings.vectors)
    info = read_events(log_dir)["projector_info"]
    assert "3 items, 4 dimensions. test vectors" in text_of(info[0])
    # Rewriting replaces the directory: still one checkpoint, no temporary directory left.
    run_reports.write_projector(log_dir, embeddings)
    assert tf.train.latest_checkpoint(log_dir).endswith("embedding.ckpt-1")
    assert not glob.glob(os.path.join(model_dir, "tensorboard", "projector.tmp-*"))


def test_write_run_reports_without_text_or_embeddings(tmp_path):
    result = run_reports.write_run_reports(str(tmp_path), labels=CAL_LABELS,
                                           logits=logit(CAL_PROBABILITIES), split="test",
                                           curves=False)
    assert result["projector"] is None and result["text_examples"] == []
    events = read_events(str(tmp_path / "tensorboard" / "test"))
    assert set(events) == {"calibration"}
    assert not os.path.exists(tmp_path / "tensorboard" / "projector")


# ---------------------------------------------------------------------------------------
# Pooled output and item embeddings
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling,normalize_first", [("cls", False), ("first", True),
                                                     ("mean", False)])
def test_click_head_of_pooled_output_is_the_logit(pooling, normalize_first, packer):
    model = make_model(pooling=pooling, normalize_first=normalize_first, num_layers=1)
    features = pack(packer, ["acme laptop ; retro camera", "", "gaming phone"],
                    ["globex laptop pro", "vintage leather", "camera"])
    pooled = model.pooled_output(features)
    assert pooled.shape == (3, 16)
    np.testing.assert_allclose(np.asarray(model.click_head(pooled))[:, 0],
                               np.asarray(model(features)), atol=1e-5)


def catalogue(num_items=7):
    return {f"i{k}": Item(f"i{k}", {"title": f"{WORDS[k]} {WORDS[k + 1]}",
                                    "categories": WORDS[k + 2]}) for k in range(num_items)}


def test_item_embeddings_bert_are_the_pooled_head_input(packer):
    model = make_model(pooling="mean", num_layers=1)
    items = catalogue()
    fields = ["title", "categories"]
    result = run_reports.item_embeddings(model, kinds.kind_class("cross_encoder")(), packer,
                                         items, None, fields, batch_size=PACK, max_items=5)
    assert result.vectors.shape == (5, 16) and result.vectors.dtype == np.float32
    assert result.item_ids == run_reports.select_items(items, 5) == sorted(result.item_ids)
    assert set(result.item_ids) <= set(items)
    assert result.titles == [items[i].title for i in result.item_ids]
    assert "pooling=mean" in result.description
    texts = [items[i].text(fields) for i in result.item_ids]
    logits = np.asarray(model(pack(packer, [""] * 5, texts)))
    np.testing.assert_allclose(np.asarray(model.click_head(result.vectors))[:, 0], logits,
                               atol=1e-5)


def test_item_embeddings_matrix_factorization_and_others():
    items = catalogue(4)
    ids = IdVocabulary(users={}, items={item_id: k + 1 for k, item_id in enumerate(sorted(items))})
    model = MatrixFactorization(num_users=3, num_items=4, embedding_dim=5)
    model({"user_index": np.zeros([1], np.int32), "item_index": np.zeros([1], np.int32)})
    result = run_reports.item_embeddings(model, kinds.kind_class("mf")(), None, items, ids,
                                         ["title"])
    table = model.item_embedding.embeddings.numpy()
    np.testing.assert_array_equal(result.vectors, table[1:5])
    assert result.item_ids == sorted(items)
    assert run_reports.item_embeddings(MostPopular(num_items=4), kinds.kind_class("popularity")(),
                                       None, items, ids, ["title"]) is None
