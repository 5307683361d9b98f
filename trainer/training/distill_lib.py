"""``python -m trainer.task distill``: a student learns from a trained teacher run.

    python -m trainer.task distill --teacher_dir runs/demo \\
        --config configs/demo_student.yaml --model_dir runs/demo_student

The student is any model kind of the config (a small two-tower, a small cross-encoder, the
glass-box linear model) and trains through the one training library (``train_lib.train``)
on ``alpha * BCE(labels) + (1 - alpha) * T^2 * KD(teacher / T)``
(models/distillation.py). Its training rows are the logged training impressions plus
``distill.unlabelled_per_example`` catalogue pairs per row (the row's user, an item drawn
uniformly from the catalogue), which only the teacher labels. The teacher's logits on all
of them, and on the validation and test splits, are computed once and cached under
``<model_dir>/teacher_logits/`` (reused when the command is rerun, e.g. after a kill).

The student's run directory is a normal run (config.yaml, model.keras, export/, metrics.json
...) plus ``distill_report.json`` (:func:`distill_report`): fidelity to the teacher
(trainer/evaluation/fidelity.py), quality against labels for both, parameters, FLOPs per example and
served examples per second.

The student must read the teacher's data: its ``data`` section must equal the teacher's
resolved one (so splits, catalogue, id and word-piece vocabularies match), which a config
gets by ``base:``-ing the teacher's config.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from trainer import backend, kinds, runs
from trainer.evaluation import fidelity, metrics
from trainer.data import input_pipeline
from trainer.training import train_lib
from trainer.evaluation import scoring
from trainer.io import atomic_directory, read_npy, write_json, write_npy
from trainer.errors import ConfigError, RunDirError

TEACHER_LOGITS_DIR = "teacher_logits"
REPORT_SPLITS = ("validation", "test")


def load_teacher(teacher_dir: str) -> runs.Run:
    """The finished teacher run (trainer/runs.py), or a RunDirError saying what is missing
    or damaged."""
    if not tf.io.gfile.exists(os.path.join(teacher_dir, runs.CONFIG)):
        raise RunDirError(f"{teacher_dir}: not a run (no config.yaml); --teacher_dir must be "
                          "a directory written by `train`")
    return runs.open_run(teacher_dir)


def check_student(cfg: config_lib.ExperimentConfig, teacher_cfg: config_lib.ExperimentConfig,
                  teacher_dir: str, model_dir: str) -> None:
    """Refuses a student that cannot learn from this teacher, before anything is written."""
    if os.path.abspath(teacher_dir) == os.path.abspath(model_dir):
        raise RunDirError(f"--model_dir {model_dir} is the teacher's run; give the student "
                          "its own directory")
    student_data = config_lib.to_dict(cfg)["data"]
    teacher_data = config_lib.to_dict(teacher_cfg)["data"]
    if student_data != teacher_data:
        diff = config_lib.diff_keys(teacher_data, student_data, "data.")
        raise ConfigError(
            f"the student's data config differs from the teacher's ({teacher_dir}/config.yaml) "
            f"at {', '.join(diff[:5])}: a student learns the teacher's logits on the same "
            "examples and tokens; base the student config on the teacher's (base: ...) and "
            "change only model/train/distill keys")
    if cfg.data.tfrecord_dir:
        raise ConfigError("config key 'data.tfrecord_dir': distillation keeps the teacher's "
                          "logits beside the in-memory table; unset it for distill")
    if cfg.train.loss != "bce":
        raise ConfigError(f"config key 'train.loss' is {cfg.train.loss}: a student learns "
                          "pointwise targets (labels and teacher logits); set train.loss=bce")


class TeacherTargets:
    """The ``train_table_hook`` of a distillation run: the training table plus unlabelled
    catalogue pairs, with the teacher's logit on every row (computed once, cached)."""

    def __init__(self, cfg: config_lib.ExperimentConfig, teacher: runs.Run):
        self.cfg = cfg
        self.teacher = teacher
        self.teacher_dir = teacher.model_dir
        self.teacher_cfg = teacher.cfg
        self.teacher_path = os.path.join(teacher.model_dir, runs.MODEL)
        self.prepared = None
        self.logits = None  # split -> teacher logits, train = the augmented table's rows

    def teacher_model(self) -> keras.Model:
        """The teacher's ``model.keras``, loaded once (not at all when the cache serves)."""
        return self.teacher.model

    def augmented_train_table(self, prepared):
        """Training rows + ``unlabelled_per_example`` uniform catalogue pairs per row, each
        row's pairs right after it: the shuffle buffer (``data.shuffle_buffer``) is far
        smaller than the table, so appending them as a block would give each epoch all
        the logged impressions first and the drawn pairs last."""
        table = prepared.tables["train"]
        per_row = self.cfg.distill.unlabelled_per_example
        labelled = table.subset(np.arange(len(table)))
        labelled.labelled = np.ones(len(table), np.float32)
        self.user_state = table.group  # rows with one group share one user state
        if per_row == 0:
            return labelled
        rng = np.random.default_rng(self.cfg.train.seed)
        rows = np.repeat(np.arange(len(table)), per_row)
        extra = table.subset(rows)
        texts = np.array(prepared.ids.item_texts(prepared.catalogue,
                                                 self.cfg.data.item_text_fields), dtype=object)
        extra.item_index = rng.integers(1, len(texts), size=len(rows)).astype(np.int32)
        extra.item_text = texts[extra.item_index]
        extra.label = np.zeros(len(rows), np.float32)
        extra.group = table.group.max() + 1 + np.arange(len(rows), dtype=np.int64)
        extra.labelled = np.zeros(len(rows), np.float32)
        extra.true_probability = None  # unknown for a drawn pair: the column is dropped
        source = np.concatenate([np.arange(len(table)), rows])
        drawn = np.concatenate([np.zeros(len(table)), np.ones(len(rows))])
        order = np.lexsort((drawn, source))
        self.user_state = table.group[source[order]]
        return type(table).concat([labelled, extra]).subset(order)

    def _fingerprint(self, train_rows: int) -> dict:
        stat = tf.io.gfile.stat(self.teacher_path)
        return {"teacher_model": os.path.abspath(self.teacher_path), "bytes": stat.length,
                "mtime_nsec": stat.mtime_nsec, "train_rows": train_rows,
                "unlabelled_per_example": self.cfg.distill.unlabelled_per_example,
                "layout": "interleaved",  # caches of the earlier block layout are stale
                "seed": self.cfg.train.seed}

    def teacher_logits(self, tables: dict, run_dir: str) -> dict:
        """``{split: logits}`` from the cache in ``run_dir``, or computed and cached."""
        path = os.path.join(run_dir, TEACHER_LOGITS_DIR)
        fingerprint = self._fingerprint(len(tables["train"]))
        meta = os.path.join(path, "meta.json")
        if tf.io.gfile.exists(meta):
            with tf.io.gfile.GFile(meta) as f:
                if json.load(f) == fingerprint:
                    return {name: read_npy(os.path.join(path, f"{name}.npy"))
                            for name in tables}
        teacher = self.teacher_model()
        packer = self.teacher.featurizer
        batch = self.teacher_cfg.train.eval_batch_size
        logits = {name: scoring.predict_logits(teacher, table, packer, batch)
                  for name, table in tables.items()}
        with atomic_directory(path) as tmp:
            for name, values in logits.items():
                write_npy(os.path.join(tmp, f"{name}.npy"), values)
            with tf.io.gfile.GFile(os.path.join(tmp, "meta.json"), "w") as f:
                json.dump(fingerprint, f)
        return logits

    def __call__(self, prepared, run_dir: str):
        self.prepared = prepared
        train = self.augmented_train_table(prepared)
        tables = {"train": train, **{name: prepared.tables[name] for name in REPORT_SPLITS
                                     if len(prepared.tables[name])}}
        self.logits = self.teacher_logits(tables, run_dir)
        targets = self.logits["train"].astype(np.float64)
        if self.cfg.distill.teacher_centering == "per_user":
            states, inverse = np.unique(self.user_state, return_inverse=True)
            means = np.bincount(inverse, weights=targets, minlength=len(states)) / \
                np.bincount(inverse, minlength=len(states))
            targets = targets - means[inverse]
        train.teacher_logit = targets.astype(np.float32)
        return train


# ---------------------------------------------------------------------------------------
# Cost: parameters, FLOPs, serving speed
# ---------------------------------------------------------------------------------------

def example_batch(table, packer, rows: int) -> dict:
    """The model inputs of ``table``'s first ``rows`` rows, as one batch."""
    data = input_pipeline.make_dataset(table.subset(np.arange(min(rows, len(table)))),
                                                 rows, packer=packer, with_labels=False)
    return next(iter(data))


def flops_per_example(model: keras.Model, kind, batch: dict) -> float:
    """Forward-pass FLOPs per row of ``batch``, counted by the TensorFlow profiler on the
    model's graph (matmuls, convolutions and elementwise ops with static shapes); under
    JAX by XLA's cost analysis of the compiled forward pass."""
    rows = int(next(iter(batch.values())).shape[0])
    if keras.backend.backend() == "jax":
        forward = backend.compiled_forward(model)
        compiled = forward.jitted.lower(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            {k: np.asarray(v) for k, v in batch.items()}).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", 0.0)) / rows
    from tensorflow.python.framework.convert_to_constants import (  # the profiler's input
        convert_variables_to_constants_v2)

    # Data-dependent shapes (a two-tower model's distinct-item encoding) cannot be counted.
    with kind.unpinned_shapes(model):
        specs = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in batch.items()}
        concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(specs)
        graph = convert_variables_to_constants_v2(concrete).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        profile = tf.compat.v1.profiler.profile(graph, options=options)
    return float(profile.total_float_ops) / rows


def examples_per_second(model: keras.Model, batch: dict, repeats: int = 20) -> float:
    """Served pairs per second: median over ``repeats`` timed forward passes of ``batch``
    through one traced function (after a warm-up call)."""
    forward = backend.compiled_forward(model)
    np.asarray(forward(batch))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        np.asarray(forward(batch))  # waits for the result
        times.append(time.perf_counter() - started)
    return int(next(iter(batch.values())).shape[0]) / statistics.median(times)


def model_cost(model: keras.Model, kind, table, packer, batch_size: int = 256) -> dict:
    """Parameters, FLOPs per example and served examples/s on ``table``'s first rows."""
    batch = example_batch(table, packer, batch_size)
    return {"parameters": int(model.count_params()),
            "flops_per_example": flops_per_example(model, kind, batch),
            "examples_per_second": examples_per_second(model, batch)}


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------

def _label_metrics(table, logits) -> dict:
    result = metrics.evaluate_predictions(table.label, logits, table.group)
    keep = ("auc", "group_auc", "ndcg@10", "ndcg@5", "logloss")
    return {k: result[k] for k in keep if k in result}


def distill_report(cfg, teacher_dir: str, model_dir: str, targets: TeacherTargets,
                   student_run: runs.Run) -> dict:
    """Fidelity and cost of the student run at ``model_dir`` against its teacher."""
    prepared = targets.prepared
    teacher_cfg = targets.teacher_cfg
    teacher = targets.teacher_model()
    teacher_packer = targets.teacher.featurizer
    student, student_packer = student_run.model, student_run.featurizer
    report = {"teacher_dir": teacher_dir, "model_dir": model_dir,
              "student_kind": kinds.for_config(cfg).name,
              "teacher_kind": kinds.for_config(teacher_cfg).name,
              "distill": config_lib.to_dict(cfg)["distill"], "splits": {}}
    for name in REPORT_SPLITS:
        if name not in targets.logits:
            continue
        table = prepared.tables[name]
        student_logits = scoring.predict_logits(student, table, student_packer,
                                                  cfg.train.eval_batch_size)
        teacher_logits = targets.logits[name]
        split = fidelity.fidelity_report(student_logits, teacher_logits, table.group)
        split["student"] = _label_metrics(table, student_logits)
        split["teacher"] = _label_metrics(table, teacher_logits)
        for metric in ("auc", "group_auc"):
            lift = split["teacher"][metric] - 0.5
            split[f"{metric}_lift_kept"] = ((split["student"][metric] - 0.5) / lift
                                            if lift > 0 else float("nan"))
        if split["teacher"].get("ndcg@10"):
            split["ndcg@10_kept"] = split["student"]["ndcg@10"] / split["teacher"]["ndcg@10"]
        report["splits"][name] = split
    table = prepared.tables["test" if len(prepared.tables["test"]) else "validation"]
    report["teacher_cost"] = model_cost(teacher, kinds.for_config(teacher_cfg), table,
                                        teacher_packer)
    report["student_cost"] = model_cost(student, kinds.for_config(cfg), table, student_packer)
    t, s = report["teacher_cost"], report["student_cost"]
    report["flops_ratio"] = s["flops_per_example"] / max(t["flops_per_example"], 1.0)
    report["speedup"] = s["examples_per_second"] / t["examples_per_second"]
    return report


def _mean_ci(values: list) -> dict:
    values = [v for v in values if not np.isnan(v)]
    low, high = metrics.bootstrap_ci(values)
    return {"mean": float(np.mean(values)) if values else float("nan"), "ci95": [low, high],
            "examples": len(values)}


def glass_box_explanations(student, featurizer, teacher_dir: str, num_examples: int = 50,
                           seed: int = 0) -> dict:
    """How the glass-box student's exact word contributions compare with the truth and
    with the teacher's integrated gradients, on the teacher's recommendations.

    The teacher's ``explain`` machinery (trainer/responsible/explain_lib.py) picks ``num_examples``
    test impressions and their top-scored candidate and computes integrated gradients; the
    student's contributions are read for the same (user, candidate). Reported with
    bootstrap 95% intervals over examples:

    * ``student_truth_precision@5``: the student's candidate words ranked by contribution,
      against the synthetic truth (the candidate words that raised the true click logit);
    * ``teacher_ig_truth_precision@5`` (every word IG ranks, as ``explain`` reports it) and
      ``teacher_ig_item_words_truth_precision@5`` (the candidate's words only, the
      student's own footing);
    * ``contribution_ig_spearman``: per example, the Spearman correlation between the
      student's contribution and the teacher's IG attribution of each candidate word both
      read (IG's word pieces joined into words), where at least 3 words are shared.
    """
    from bert_recommender.explainability import faithfulness
    from bert_recommender.explainability.explainer import TRUTH_K_TOKENS
    from bert_recommender.explainability.pair_scorer import ITEM
    from trainer.responsible import explain_lib

    records, summary, context = explain_lib.run_explanations(
        teacher_dir, num_examples=num_examples, methods=["integrated_gradients"],
        seed=seed, progress=False)
    cases = context["cases"]
    position = {item: i for i, item in enumerate(featurizer.item_ids)}
    history = np.zeros([len(cases), featurizer.max_history], np.int32)
    for row, case in enumerate(cases):
        newest_first = [position[item] for item, _ in reversed(case.history)]
        newest_first = newest_first[:featurizer.max_history]
        history[row, :len(newest_first)] = newest_first
    x = featurizer.features({
        "item_index": tf.constant([position[c.candidate_id] for c in cases], tf.int32),
        "history_index": tf.constant(history), "query": tf.constant([c.query for c in cases])})
    contributions = np.asarray(student.contributions(x)["word_contributions"])
    word_ids = x["candidate_words"].numpy()
    k = TRUTH_K_TOKENS
    rows = {"student": [], "teacher_all": [], "teacher_item": [], "spearman": []}
    for row, record in enumerate(records):
        truth = (record.get("truth") or {}).get("reason_tokens") or []
        words = [featurizer.words[i - 1] for i in word_ids[row] if i]
        values = [float(v) for i, v in zip(word_ids[row], contributions[row]) if i]
        ig = record["token_attributions"]["integrated_gradients"]
        teacher_words = [w["text"] for w in record["words"]]
        item = [(w["text"], v) for w, v in zip(record["words"], ig) if w["segment"] == ITEM]
        if truth:
            ranked = [words[i] for i in faithfulness.order_by(values)]
            rows["student"].append(faithfulness.truth_at_k(ranked, truth, k)[
                f"truth_precision@{k}"])
            rows["teacher_all"].append(faithfulness.truth_at_k(
                [teacher_words[i] for i in faithfulness.order_by(ig)], truth, k)[
                f"truth_precision@{k}"])
            rows["teacher_item"].append(faithfulness.truth_at_k(
                [item[i][0] for i in faithfulness.order_by([v for _, v in item])], truth, k)[
                f"truth_precision@{k}"])
        teacher_by_word = {}
        for text, value in item:
            teacher_by_word[text.lower()] = teacher_by_word.get(text.lower(), 0.0) + value
        shared = [(v, teacher_by_word[w]) for w, v in zip(words, values)
                  if w in teacher_by_word]
        if len(shared) >= 3:
            rows["spearman"].append(fidelity.spearman(*zip(*shared)))
    return {"examples": len(records), "k": k,
            f"student_truth_precision@{k}": _mean_ci(rows["student"]),
            f"teacher_ig_truth_precision@{k}": _mean_ci(rows["teacher_all"]),
            f"teacher_ig_item_words_truth_precision@{k}": _mean_ci(rows["teacher_item"]),
            "contribution_ig_spearman": _mean_ci(rows["spearman"])}


def distill(cfg: config_lib.ExperimentConfig, teacher_dir: str, model_dir: str,
            strategy: tf.distribute.Strategy | None = None,
            explain_examples: int = 50) -> dict:
    """Trains the student of ``cfg`` on ``teacher_dir``'s logits into ``model_dir`` and
    writes ``distill_report.json``; returns the report. A glass-box student of a text
    teacher also gets :func:`glass_box_explanations` on ``explain_examples`` examples."""
    teacher = load_teacher(teacher_dir)
    check_student(cfg, teacher.cfg, teacher_dir, model_dir)
    targets = TeacherTargets(cfg, teacher)
    results = train_lib.train(cfg, model_dir, strategy, train_table_hook=targets)
    if not results:  # a non-chief multi-worker process
        return {}
    student = runs.open_run(model_dir)
    report = distill_report(cfg, teacher_dir, model_dir, targets, student)
    if student.kind.exact_contributions and teacher.kind.uses_text:
        report["explanations"] = glass_box_explanations(
            student.model, student.featurizer, teacher_dir,
            num_examples=explain_examples, seed=cfg.train.seed)
    write_json(os.path.join(model_dir, "distill_report.json"), report)
    return report


def report_table(report: dict, split: str = "test") -> str:
    """A Markdown table of one report's headline figures (what ``distill`` prints)."""
    s = report["splits"].get(split) or next(iter(report["splits"].values()))
    rows = [("", "teacher", "student"),
            ("AUC", s["teacher"]["auc"], s["student"]["auc"]),
            ("group AUC", s["teacher"].get("group_auc"), s["student"].get("group_auc")),
            ("nDCG@10", s["teacher"].get("ndcg@10"), s["student"].get("ndcg@10")),
            ("parameters", report["teacher_cost"]["parameters"],
             report["student_cost"]["parameters"]),
            ("FLOPs / example", report["teacher_cost"]["flops_per_example"],
             report["student_cost"]["flops_per_example"]),
            ("examples / s", report["teacher_cost"]["examples_per_second"],
             report["student_cost"]["examples_per_second"])]
    lines = [f"| {' | '.join(map(str, rows[0]))} |", "|---|---:|---:|"]
    lines += [f"| {name} | {_fmt(a)} | {_fmt(b)} |" for name, a, b in rows[1:]]
    lines.append("")
    lines.append(f"AUC lift kept {_fmt(s['auc_lift_kept'])}, top-1 agreement "
                 f"{_fmt(s['top1_agreement'])}, Kendall tau {_fmt(s['kendall_tau'])}, "
                 f"logit Pearson {_fmt(s['logit_pearson'])} / Spearman "
                 f"{_fmt(s['logit_spearman'])}, FLOPs ratio {_fmt(report['flops_ratio'])}, "
                 f"speed-up {_fmt(report['speedup'])}x ({split})")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)
