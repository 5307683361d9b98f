"""TensorBoard extras and plots every training run writes next to its metrics.

Two entry points for ``train_lib``:

* :class:`ValidationCurves`, a Keras callback for ``model.fit``: at the end of each epoch it
  scores the validation set and writes, into its ``log_dir`` (meant to be
  ``<model_dir>/tensorboard/validation``), a PR curve (tag ``pr_curve``, TensorBoard's
  "PR Curves" tab) and histograms of the predicted click probability (tags
  ``predicted_probability``, ``predicted_probability/label_0``, ``.../label_1``), at
  ``step = epoch`` (0-based, as Keras' own TensorBoard callback counts epochs).
* :func:`write_run_reports`, called once after evaluation; it writes::

      <model_dir>/tensorboard/<split>/     text: scored_examples (markdown table of top,
                                           bottom and random rows), calibration (bin
                                           table); with curves=True also the PR curve and
                                           probability histograms of the final model
      <model_dir>/tensorboard/projector/   item-embedding projector: checkpoint, metadata.tsv,
                                           projector_config.pbtxt, an events file (text
                                           summary "projector_info") so TensorBoard lists it
                                           as a run
      <model_dir>/calibration.png          reliability diagram with per-bin counts and ECE
      <model_dir>/score_histogram.png      predicted probability by label

:func:`item_embeddings` computes the catalogue's item vectors for the projector. Every path
may be a ``gs://`` URL: files go through ``tf.io.gfile`` and are written under a temporary
name, then renamed into place.
"""

from __future__ import annotations

import dataclasses
import io
import os

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector
from tensorboard.plugins.pr_curve import metadata as pr_curve_metadata

from trainer.evaluation import metrics
from trainer.io import atomic_directory, atomic_write_bytes, atomic_write_text

BINNINGS = ("uniform", "quantile")
PROJECTOR_TENSOR = "item_embedding/.ATTRIBUTES/VARIABLE_VALUE"
_PR_MINIMUM_COUNT = 1e-7  # TensorBoard's pr_curve.summary guard against 0/0
_TEXT_MAX_CHARS = 160


# ---------------------------------------------------------------------------------------
# PR curve and probability histograms (the callback and write_run_reports share these)
# ---------------------------------------------------------------------------------------

def probabilities_from_logits(logits) -> np.ndarray:
    """``sigmoid(logits)`` as float64, computed without overflow for large ``|logit|``."""
    return metrics._stable_sigmoid(np.asarray(logits, dtype=np.float64).reshape(-1))


def pr_curve_data(labels, probabilities, num_thresholds: int = 101) -> np.ndarray:
    """The ``[6, num_thresholds]`` float32 tensor TensorBoard's PR-curve plugin reads.

    Rows are true positives, false positives, true negatives, false negatives, precision
    and recall of the classifier ``probability >= t`` at the evenly spaced thresholds
    ``t_i = i / (num_thresholds - 1)``; the binning is the one of
    ``tensorboard.plugins.pr_curve.summary.pb`` (``floor(p * (num_thresholds - 1))``).
    Precision is 0 where nothing is predicted positive.
    """
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    y = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
    p = np.clip(np.asarray(probabilities, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if len(y) != len(p):
        raise ValueError(f"labels and probabilities differ in length: {len(y)} vs {len(p)}")
    buckets = np.floor(p * (num_thresholds - 1)).astype(np.int64)
    tp = np.cumsum(np.bincount(buckets[y], minlength=num_thresholds)[::-1])[::-1]
    fp = np.cumsum(np.bincount(buckets[~y], minlength=num_thresholds)[::-1])[::-1]
    tp, fp = tp.astype(np.float64), fp.astype(np.float64)
    tn, fn = fp[0] - fp, tp[0] - tp
    precision = tp / np.maximum(_PR_MINIMUM_COUNT, tp + fp)
    recall = tp / np.maximum(_PR_MINIMUM_COUNT, tp + fn)
    return np.stack([tp, fp, tn, fn, precision, recall]).astype(np.float32)


def write_pr_curve(tag: str, labels, probabilities, step: int,
                   num_thresholds: int = 101, description: str = "") -> None:
    """Writes a PR curve summary into the default ``tf.summary`` writer.

    ``tensorboard.plugins.pr_curve.summary.op`` is a TF1 graph op (``tf.compat.v1.summary``)
    that TF2 writers do not record; this writes the same tensor and plugin metadata with
    ``tf.summary.write`` instead, which the PR Curves tab of TensorBoard 2.x reads.
    """
    summary_metadata = pr_curve_metadata.create_summary_metadata(
        display_name=tag, description=description, num_thresholds=num_thresholds)
    tf.summary.write(tag, pr_curve_data(labels, probabilities, num_thresholds), step=step,
                     metadata=summary_metadata.SerializeToString())


def write_probability_histograms(labels, probabilities, step: int, buckets: int = 30) -> None:
    """Histograms of the predicted probability, all rows and per label, into the default
    ``tf.summary`` writer (tags ``predicted_probability`` and ``.../label_0|1``)."""
    y = np.asarray(labels).reshape(-1) > 0.5
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    tf.summary.histogram("predicted_probability", p, step=step, buckets=buckets)
    for value, rows in ((0, ~y), (1, y)):
        if rows.any():
            tf.summary.histogram(f"predicted_probability/label_{value}", p[rows], step=step,
                                 buckets=buckets)


def _finite_rows(labels, logits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, logits, kept)`` without the rows whose logit is NaN; ``kept`` is the mask."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    if len(y) != len(z):
        raise ValueError(f"labels and logits differ in length: {len(y)} vs {len(z)}")
    # A diverged model predicts NaN; report the rest rather than fail the run at its end.
    kept = ~np.isnan(z)
    return y[kept], z[kept], kept


class ValidationRanking(keras.callbacks.Callback):
    """Scores the validation split after each epoch and adds its ranking metrics to the
    epoch's logs, where early stopping, checkpointing, TensorBoard and the history read
    them: ``val_auc``, ``val_loss`` (log loss of the sigmoid), ``val_group_auc`` and
    ``val_ndcg@10`` (trainer/evaluation/metrics.py, per group then averaged).

    Used instead of ``fit``'s own validation pass (one ``predict`` per epoch, not two)
    when ``train.early_stopping_metric`` is a per-group metric. Place it before the
    callbacks that read the logs. ``last_logits`` keeps the epoch's logits for
    :class:`ValidationCurves`.

    Args:
      data: the unshuffled validation features (a ``tf.data.Dataset`` for ``predict``), or
        a function of the model returning the rows' logits (cached item vectors:
        ``ModelKind.table_logits_from_catalogue``).
      labels, groups: the validation rows' labels and impression/user groups.
    """

    def __init__(self, data, labels, groups):
        super().__init__()
        self.data = data
        self.labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        self.groups = np.asarray(groups).reshape(-1)
        self.last_logits = None

    def on_epoch_end(self, epoch, logs=None):
        logits = (self.data(self.model) if callable(self.data)
                  else self.model.predict(self.data, verbose=0))
        logits = np.asarray(logits, np.float64).reshape(-1)
        if len(logits) != len(self.labels):
            raise ValueError(f"ValidationRanking: the data gave {len(logits)} predictions for "
                             f"{len(self.labels)} labels; pass the unshuffled validation set")
        self.last_logits = logits
        scores = metrics.evaluate_predictions(self.labels, logits, self.groups)
        if logs is not None:
            logs.update({"val_auc": scores["auc"], "val_loss": scores["logloss"],
                         "val_group_auc": scores["group_auc"],
                         "val_ndcg@10": scores["ndcg@10"]})


class ValidationFullRanking(keras.callbacks.Callback):
    """Ranks each validation positive against the whole catalogue after each epoch and adds
    ``val_full_ndcg@10`` and ``val_full_hr@10`` to the epoch's logs (for early stopping on
    ``train.early_stopping_metric: full_ndcg@10``, the sequential benchmarks' published
    protocol: no item is excluded but the catalogue's "no item" column, as RecBole's
    full-sort evaluation of sequential models masks only its padding id).

    The logits come from the kind's ``catalogue_logits`` (one user state against the cached
    item vectors). Place it before the callbacks that read the logs.

    Args:
      kind: the run's model kind (trainer/kinds/).
      featurizer: the kind's featurizer.
      user_rows: a ``PairTable`` with one row per validation positive (its user side is
        read; ``item_index`` is the positive's catalogue column).
      item_text: the N + 1 catalogue texts, index-aligned (entry 0 "").
      batch_size: the scoring batch size.
    """

    def __init__(self, kind, featurizer, user_rows, item_text, batch_size: int):
        super().__init__()
        self.kind, self.featurizer, self.user_rows = kind, featurizer, user_rows
        self.item_text, self.batch_size = item_text, batch_size

    def on_epoch_end(self, epoch, logs=None):
        logits = self.kind.catalogue_logits(self.model, self.featurizer, self.user_rows,
                                            self.item_text, self.batch_size)
        exclude = np.zeros(logits.shape, dtype=bool)
        exclude[:, 0] = True
        ranked = metrics.full_ranking_metrics(logits, self.user_rows.item_index,
                                              exclude=exclude, ks=(10,))
        if logs is not None:
            logs.update({"val_full_ndcg@10": float(np.mean(ranked["ndcg@10"])),
                         "val_full_hr@10": float(np.mean(ranked["hr@10"]))})


class ValidationCurves(keras.callbacks.Callback):
    """Writes a validation PR curve and probability histograms at the end of each epoch.

    Args:
      log_dir: where the event file goes; meant to be ``<model_dir>/tensorboard/validation``
        (next to the Keras TensorBoard callback's validation scalars).
      data: what to score, in the order of ``labels``: a ``tf.data.Dataset`` for
        ``model.predict`` (features only, or ``(features, label)`` pairs whose labels are
        ignored; it must not shuffle), or a callable ``data(model) -> logits``.
      labels: the 0/1 labels of the validation rows, shape ``[n]``.
      num_thresholds: thresholds of the PR curve (evenly spaced in ``[0, 1]``).
      histogram_buckets: buckets of the probability histograms.
      every_n_epochs: score every n-th epoch only; each scoring is a full ``predict`` pass
        over ``data``, on top of the validation pass ``fit`` already makes.

    Example:
        >>> val_features = input_pipeline.make_dataset(tables["validation"], 256,
        ...                                            packer=packer, with_labels=False)
        >>> curves = ValidationCurves(os.path.join(model_dir, "tensorboard", "validation"),
        ...                           val_features, tables["validation"].label)
        >>> model.fit(train_ds, ..., callbacks=[..., curves])
    """

    def __init__(self, log_dir: str, data, labels, num_thresholds: int = 101,
                 histogram_buckets: int = 30, every_n_epochs: int = 1):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be at least 1, got {every_n_epochs}")
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
        self.log_dir = log_dir
        self.data = data
        self.labels = np.asarray(labels, dtype=np.float32).reshape(-1)
        self.num_thresholds = num_thresholds
        self.histogram_buckets = histogram_buckets
        self.every_n_epochs = every_n_epochs
        self._writer = None

    def predict_logits(self) -> np.ndarray:
        """The current model's logits for ``data``, shape ``[n]``."""
        if callable(self.data):
            logits = self.data(self.model)
        else:
            logits = self.model.predict(self.data, verbose=0)
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if len(logits) != len(self.labels):
            raise ValueError(f"ValidationCurves: the data gave {len(logits)} predictions for "
                             f"{len(self.labels)} labels; pass the unshuffled validation set")
        return logits

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        labels, logits, _ = _finite_rows(self.labels, self.predict_logits())
        probabilities = probabilities_from_logits(logits)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            write_pr_curve("pr_curve", labels, probabilities, step=epoch,
                           num_thresholds=self.num_thresholds)
            write_probability_histograms(labels, probabilities, step=epoch,
                                         buckets=self.histogram_buckets)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------

def calibration_bins(labels, probabilities, num_bins: int = 10,
                     binning: str = "uniform") -> dict:
    """Reliability-diagram bins and the expected calibration error.

    ``binning="uniform"``: equal-width bins ``[0, 1/B), ..., [(B-1)/B, 1]``, the bins of
    :func:`trainer.evaluation.metrics.expected_calibration_error`, whose value is returned as ``ece``.
    ``"quantile"``: edges at the quantiles of the probabilities, so bins hold about equally
    many rows (ties can leave some empty); ``ece`` is computed the same way over them.

    Returns a JSON-ready dict: ``binning``, ``num_bins``, ``examples``, ``ece`` and
    ``bins``, a list of ``{"lower", "upper", "count", "mean_probability",
    "fraction_positive"}`` (the two means are None for an empty bin).
    """
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be at least 1, got {num_bins}")
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if len(y) != len(p) or len(y) == 0:
        raise ValueError(f"need equal, non-zero numbers of labels and probabilities, got "
                         f"{len(y)} and {len(p)}")
    if binning == "uniform":
        edges = np.linspace(0.0, 1.0, num_bins + 1)
        index = np.clip(np.floor(p * num_bins).astype(np.int64), 0, num_bins - 1)
    else:
        edges = np.quantile(p, np.linspace(0.0, 1.0, num_bins + 1))
        index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    label_sums = np.bincount(index, weights=y, minlength=num_bins)
    prob_sums = np.bincount(index, weights=p, minlength=num_bins)
    if binning == "uniform":
        ece = metrics.expected_calibration_error(y, p, num_bins)
    else:
        ece = float(np.sum(np.abs(label_sums - prob_sums)) / len(y))
    bins = []
    for b in range(num_bins):
        n = int(counts[b])
        bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                     "mean_probability": float(prob_sums[b] / n) if n else None,
                     "fraction_positive": float(label_sums[b] / n) if n else None})
    return {"binning": binning, "num_bins": num_bins, "examples": int(len(y)),
            "ece": float(ece), "bins": bins}


def calibration_table(calibration: dict) -> str:
    """:func:`calibration_bins` as a markdown table (for TensorBoard's text tab)."""
    lines = [f"ECE = {calibration['ece']:.4f} over {calibration['examples']} rows "
             f"({calibration['num_bins']} {calibration['binning']} bins)", "",
             "| bin | range | count | mean predicted | fraction positive |",
             "|---:|---|---:|---:|---:|"]
    for i, b in enumerate(calibration["bins"]):
        mean = "-" if b["count"] == 0 else f"{b['mean_probability']:.4f}"
        frac = "-" if b["count"] == 0 else f"{b['fraction_positive']:.4f}"
        lines.append(f"| {i} | [{b['lower']:.3f}, {b['upper']:.3f}] | {b['count']} | "
                     f"{mean} | {frac} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# PNG plots
# ---------------------------------------------------------------------------------------

def new_figure(**kwargs):
    """A matplotlib ``Figure`` for the run's and the audit's PNGs."""
    # matplotlib.figure.Figure, not pyplot: no global figure registry (nothing to leak or
    # close) and no matplotlib.use() call, which would switch the backend of a notebook
    # that runs training in-process (Colab's inline plots). Saving to PNG uses Agg.
    from matplotlib.figure import Figure
    return Figure(layout="constrained", **kwargs)


def save_png(figure, path: str) -> str:
    """Writes ``figure`` as a PNG at ``path`` (atomically) and clears it; returns ``path``."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    figure.clear()
    atomic_write_bytes(path, buffer.getvalue())
    return path


def save_calibration_plot(path: str, calibration: dict, title: str = "") -> str:
    """Saves a reliability diagram of :func:`calibration_bins` output as a PNG at ``path``.

    Top: fraction of positives against mean predicted probability per non-empty bin, each
    point labelled with its row count, and the diagonal of perfect calibration. Bottom: rows
    per bin. The title gives the ECE. Returns ``path``.
    """
    bins = [b for b in calibration["bins"] if b["count"]]
    figure = new_figure(figsize=(5.5, 6.5))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="0.6", label="perfectly calibrated")
    x = [b["mean_probability"] for b in bins]
    y = [b["fraction_positive"] for b in bins]
    top.plot(x, y, marker="o", color="C0", label="model")
    for b in bins:
        below = b["fraction_positive"] > 0.08  # above the point near the bottom edge
        top.annotate(str(b["count"]), (b["mean_probability"], b["fraction_positive"]),
                     textcoords="offset points", xytext=(4, -10 if below else 4), fontsize=7,
                     color="0.3")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("fraction of positives")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{title + ': ' if title else ''}ECE = {calibration['ece']:.4f}\n"
                  f"{calibration['num_bins']} {calibration['binning']} bins, "
                  f"n = {calibration['examples']}", fontsize=10)
    bottom.bar([b["lower"] for b in calibration["bins"]],
               [b["count"] for b in calibration["bins"]],
               width=[b["upper"] - b["lower"] for b in calibration["bins"]], align="edge",
               color="C0", alpha=0.6, edgecolor="white")
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("rows")
    return save_png(figure, path)


def save_score_histogram(path: str, labels, probabilities, title: str = "",
                         num_bins: int = 40) -> str:
    """Saves histograms (densities) of the predicted probability for label 0 and label 1
    as a PNG at ``path``; returns ``path``."""
    y = np.asarray(labels).reshape(-1) > 0.5
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    figure = new_figure(figsize=(6, 4))
    axes = figure.subplots()
    for value, rows, color in ((0, ~y, "C1"), (1, y, "C0")):
        if rows.any():
            axes.hist(p[rows], bins=edges, density=True, histtype="stepfilled", alpha=0.45,
                      color=color, edgecolor=color, label=f"label {value} (n = {rows.sum()})")
    axes.set_xlim(0, 1)
    axes.set_xlabel("predicted click probability")
    axes.set_ylabel("density")
    axes.legend(fontsize=8)
    axes.set_title(f"{title + ': ' if title else ''}predicted probability by label",
                   fontsize=10)
    return save_png(figure, path)


# ---------------------------------------------------------------------------------------
# Scored examples
# ---------------------------------------------------------------------------------------

def select_examples(logits, num_examples: int = 8, seed: int = 0) -> list[tuple[str, int]]:
    """Rows to show: about a third top-scored, a third bottom-scored, the rest drawn at
    random (seeded) from the others; returns ``[(kind, row)]`` with kind in
    ``top | bottom | random``, no row twice."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    num_examples = min(num_examples, len(z))
    num_top = -(-num_examples // 3)
    num_bottom = -(-(num_examples - num_top) // 2)
    num_random = num_examples - num_top - num_bottom
    order = np.argsort(-z, kind="stable")  # by logit: saturated probabilities still rank
    top = [int(r) for r in order[:num_top]]
    bottom = [int(r) for r in order[::-1][:num_bottom]]
    taken = set(top) | set(bottom)
    rest = np.array([r for r in range(len(z)) if r not in taken], dtype=np.int64)
    rng = np.random.default_rng(seed)
    random_rows = sorted(int(r) for r in rng.choice(rest, size=num_random, replace=False))
    return ([("top", r) for r in top] + [("bottom", r) for r in bottom]
            + [("random", r) for r in random_rows])


def _markdown_cell(text) -> str:
    text = " ".join(str(text).split())  # newlines would end the table row
    if len(text) > _TEXT_MAX_CHARS:
        text = text[: _TEXT_MAX_CHARS - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def scored_examples_table(labels, logits, user_text, item_text, num_examples: int = 8,
                          seed: int = 0) -> str:
    """A markdown table of :func:`select_examples` rows: kind, rank by score (1 = highest),
    predicted probability, logit, label, user side and candidate text (truncated)."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    ranks = np.empty(len(z), dtype=np.int64)
    ranks[np.argsort(-z, kind="stable")] = np.arange(1, len(z) + 1)
    probabilities = probabilities_from_logits(z)
    lines = ["| kind | rank | probability | logit | label | user side | candidate |",
             "|---|---:|---:|---:|---:|---|---|"]
    for kind, row in select_examples(z, num_examples, seed):
        lines.append(f"| {kind} | {ranks[row]} of {len(z)} | {probabilities[row]:.4f} | "
                     f"{z[row]:.3f} | {int(y[row])} | {_markdown_cell(user_text[row])} | "
                     f"{_markdown_cell(item_text[row])} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Item embeddings and the projector
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ItemEmbeddings:
    """Item vectors for the embedding projector, row-aligned with ``item_ids``/``titles``."""

    item_ids: list
    titles: list
    vectors: np.ndarray  # float32 [items, dim]
    description: str = ""  # how the vectors were computed (shown in TensorBoard)

    def __len__(self) -> int:
        return len(self.item_ids)


def select_items(catalogue, max_items: int = 10000, seed: int = 0) -> list:
    """Item ids of ``catalogue``, sorted; a seeded random sample of ``max_items`` of them
    (still sorted) when the catalogue is larger."""
    ids = sorted(catalogue)
    if len(ids) <= max_items:
        return ids
    chosen = np.random.default_rng(seed).choice(len(ids), size=max_items, replace=False)
    return [ids[i] for i in sorted(chosen)]


def item_embeddings(model, kind, featurizer, catalogue, ids, item_text_fields, *,
                    item_index=None, batch_size: int = 64, max_items: int = 10000,
                    seed: int = 0) -> ItemEmbeddings | None:
    """Vectors for (up to ``max_items``, see :func:`select_items`) catalogue items, as
    ``kind.item_embeddings`` gives them (trainer/kinds/: a two-tower model's item tower, a
    cross-encoder's pooled output of the item alone, MF's embedding rows); None for kinds
    with nothing to project.

    Args:
      model: the trained model.
      kind: its :class:`~trainer.kinds.base.ModelKind`.
      featurizer: the run's featurizer.
      catalogue: item id -> :class:`trainer.data.canonical.Item`.
      ids: the run's ``IdVocabulary``.
      item_text_fields: the run's ``data.item_text_fields``.
      item_index: a retrieving run's ``ItemIndex``: its vectors are reused instead of
        running the item tower again.
      batch_size: items encoded per forward pass.
      max_items: cap on the number of items, so large catalogues stay cheap.
      seed: seed of the item sample when the catalogue has more than ``max_items``.
    """
    found = kind.item_embeddings(model, featurizer, select_items(catalogue, max_items, seed),
                                 catalogue, ids, item_text_fields, item_index, batch_size)
    if found is None or not found[0]:
        return None
    item_ids, vectors, description = found
    return ItemEmbeddings(item_ids=list(item_ids), titles=[catalogue[i].title for i in item_ids],
                          vectors=np.asarray(vectors, dtype=np.float32),
                          description=description)


def _tsv_cell(text) -> str:
    # The projector splits metadata on tabs and lines and has no escape syntax.
    return " ".join(str(text).replace("\t", " ").splitlines()).strip()


def write_projector(log_dir: str, embeddings: ItemEmbeddings) -> str:
    """Writes TensorBoard's embedding projector for ``embeddings`` into ``log_dir``.

    ``log_dir`` (e.g. ``<model_dir>/tensorboard/projector``) is replaced as a whole: the
    files are written into a temporary sibling directory that is renamed into place. It
    holds a ``tf.train.Checkpoint`` with the vectors (tensor
    ``item_embedding/.ATTRIBUTES/VARIABLE_VALUE``), ``metadata.tsv`` (a header row
    ``item_id<TAB>title``, then one row per item; tabs and line breaks in titles become
    spaces), ``projector_config.pbtxt`` naming both, and an events file with a text summary
    (``projector_info``) so that TensorBoard, pointed at ``<model_dir>/tensorboard``, lists
    the directory as a run. Returns ``log_dir``.
    """
    vectors = np.asarray(embeddings.vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(embeddings.item_ids) or \
            len(embeddings.titles) != len(embeddings.item_ids):
        raise ValueError(f"embeddings: {len(embeddings.item_ids)} ids and "
                         f"{len(embeddings.titles)} titles for vectors of shape "
                         f"{vectors.shape}")
    final = log_dir.rstrip("/")
    with atomic_directory(final) as tmp:
        checkpoint = tf.train.Checkpoint(item_embedding=tf.Variable(vectors, trainable=False))
        # save() also writes the "checkpoint" state file, with a path relative to the
        # directory, which is how the projector finds the checkpoint after the rename.
        checkpoint.save(os.path.join(tmp, "embedding.ckpt"))
        atomic_write_text(os.path.join(tmp, "metadata.tsv"), "item_id\ttitle\n" + "".join(
            f"{_tsv_cell(i)}\t{_tsv_cell(t)}\n"
            for i, t in zip(embeddings.item_ids, embeddings.titles)))
        config = projector.ProjectorConfig()
        embedding = config.embeddings.add()
        embedding.tensor_name = PROJECTOR_TENSOR
        embedding.metadata_path = "metadata.tsv"
        projector.visualize_embeddings(tmp, config)
        writer = tf.summary.create_file_writer(tmp)
        with writer.as_default():
            tf.summary.text("projector_info", f"{len(vectors)} items, {vectors.shape[1]} "
                            f"dimensions. {embeddings.description}", step=0)
        writer.close()
    return final


# ---------------------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------------------

def read_scalars(log_dir: str) -> dict:
    """The scalar summaries under a TensorBoard ``log_dir`` (e.g. ``<model_dir>/tensorboard``):
    ``{run: {tag: [(step, value), ...]}}`` with runs as paths relative to ``log_dir``.
    Keras writes scalars as tensors, so this reads them the way TensorBoard's Scalars tab
    does (the scalars plugin's tensor summaries)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import (  # pylint: disable=import-outside-toplevel
        EventAccumulator)

    found = {}
    for directory, _, files in sorted(tf.io.gfile.walk(log_dir)):
        if not any(name.startswith("events.out.tfevents") for name in files):
            continue
        accumulator = EventAccumulator(directory)
        accumulator.Reload()
        tags = accumulator.PluginTagToContent("scalars") \
            if "scalars" in accumulator.ActivePlugins() else {}
        run = os.path.relpath(directory, log_dir) if "://" not in log_dir else \
            directory[len(log_dir):].strip("/") or "."
        for tag in sorted(tags):
            found.setdefault(run, {})[tag] = [
                (event.step, float(tf.make_ndarray(event.tensor_proto)))
                for event in accumulator.Tensors(tag)]
    return found


def format_scalars(scalars: dict, digits: int = 4) -> str:
    """:func:`read_scalars` output as one line per run and tag, values in step order."""
    lines = []
    for run, tags in scalars.items():
        for tag, points in tags.items():
            values = [round(value, digits) for _, value in sorted(points)]
            lines.append(f"{run:<14} {tag:<32} {values}")
    return "\n".join(lines)


def write_run_reports(model_dir: str, *, labels, logits, user_text=None, item_text=None,
                      embeddings: ItemEmbeddings | None = None, split: str = "validation",
                      num_text_examples: int = 8, num_bins: int = 10,
                      binning: str = "uniform", curves: bool = True,
                      num_thresholds: int = 101, step: int = 0, seed: int = 0) -> dict:
    """Writes the run's TensorBoard extras and plots for one evaluated split.

    Args:
      model_dir: the run directory (a local path or ``gs://`` URL).
      labels: 0/1 labels, shape ``[n]`` (e.g. ``tables[split].label``).
      logits: the model's logits for the same rows (e.g. ``predict_logits(...)``). Rows
        whose logit is NaN are left out (and counted in the result).
      user_text, item_text: the rows' user side and candidate text (``PairTable`` columns),
        for the scored-examples table; without them that table is skipped.
      embeddings: :func:`item_embeddings` output for the projector; None skips it.
      split: names the TensorBoard run directory ``tensorboard/<split>`` and the plot
        titles. The PNG names do not include it: call this once per run.
      num_text_examples: rows in the scored-examples table (top, bottom, random).
      num_bins, binning: reliability-diagram bins (:func:`calibration_bins`).
      curves: also write the PR curve and probability histograms of these predictions at
        ``step`` (the final model, e.g. after early stopping restored the best weights).
      num_thresholds: thresholds of that PR curve.
      step: the TensorBoard step of the summaries written here (e.g. epochs run).
      seed: seed of the random rows in the scored-examples table.

    Writes ``<model_dir>/tensorboard/<split>/`` (text ``scored_examples`` and
    ``calibration``; ``pr_curve`` and ``predicted_probability`` histograms when
    ``curves``), ``<model_dir>/tensorboard/projector/`` (:func:`write_projector`),
    ``<model_dir>/calibration.png`` and ``<model_dir>/score_histogram.png``.

    Returns a JSON-ready dict: ``tensorboard`` (the split's log dir), ``projector`` (its
    dir or None), ``calibration_png``, ``score_histogram_png``, ``text_examples`` (rows
    shown), ``nan_predictions`` and ``calibration`` (:func:`calibration_bins`).
    """
    y, z, kept = _finite_rows(labels, logits)
    if len(y) == 0:
        raise ValueError("write_run_reports needs at least one row with a non-NaN logit")
    probabilities = probabilities_from_logits(z)
    calibration = calibration_bins(y, probabilities, num_bins, binning)

    tb_dir = os.path.join(model_dir, "tensorboard", split)
    writer = tf.summary.create_file_writer(tb_dir)
    shown = []
    with writer.as_default():
        if user_text is not None and item_text is not None:
            if not len(user_text) == len(item_text) == len(kept):
                raise ValueError(f"user_text ({len(user_text)}), item_text "
                                 f"({len(item_text)}) and labels ({len(kept)}) differ in "
                                 "length")
            users = np.asarray(user_text, dtype=object).reshape(-1)[kept]
            items = np.asarray(item_text, dtype=object).reshape(-1)[kept]
            rows = np.flatnonzero(kept)
            shown = [int(rows[r]) for _, r in select_examples(z, num_text_examples, seed)]
            tf.summary.text("scored_examples", scored_examples_table(
                y, z, users, items, num_text_examples, seed), step=step)
        tf.summary.text("calibration", calibration_table(calibration), step=step)
        if curves:
            write_pr_curve("pr_curve", y, probabilities, step=step,
                           num_thresholds=num_thresholds)
            write_probability_histograms(y, probabilities, step=step)
    writer.close()

    projector_dir = None
    if embeddings is not None and len(embeddings):
        projector_dir = write_projector(os.path.join(model_dir, "tensorboard", "projector"),
                                        embeddings)
    calibration_png = save_calibration_plot(os.path.join(model_dir, "calibration.png"),
                                            calibration, title=split)
    histogram_png = save_score_histogram(os.path.join(model_dir, "score_histogram.png"),
                                         y, probabilities, title=split)
    return {"tensorboard": tb_dir, "projector": projector_dir,
            "calibration_png": calibration_png, "score_histogram_png": histogram_png,
            "text_examples": shown, "nan_predictions": int(len(kept) - kept.sum()),
            "calibration": calibration}
