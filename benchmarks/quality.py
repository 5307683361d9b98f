"""Ranking quality on MovieLens: popularity vs matrix factorisation vs BERT, one protocol.

    python -m benchmarks.quality --dataset movielens --data_dir ../shared/data/ml-latest-small \\
        --out runs/quality [--config configs/movielens.yaml] [--set train.epochs=2 ...] \\
        [--models popularity,mf,bert] [--bootstrap 1000] \\
        [--pretrained ../shared/models/all-MiniLM-L6-v2 --pretrained_eval_users 50]

Protocol (identical for every model, so the rows differ only in the model):

* The data is loaded and turned into pair tables once, with one id vocabulary and one
  WordPiece vocabulary, by ``trainer.train_lib.prepare_data`` (what ``train`` uses).
* Split: chronological leave-last-out per user (trainer/datasets/movielens.py): each user's
  last positive (rating >= ``data.movielens.positive_threshold``) is the test item, the one
  before it the validation item, earlier positives are training impressions with
  ``negatives_per_positive`` sampled negatives.
* Every model is built by ``train_lib.build_model`` and fitted by ``train_lib.fit_model``
  (the routine ``train`` uses: AdamW with warmup/decay, BCE on the logit, early stopping on
  validation AUC restoring the best weights). Popularity has no weights: it is only counted.
* Test: each user's impression is the held-out positive plus ``data.movielens.eval_negatives``
  items the user never rated, sampled uniformly with a seed (the same candidates for every
  model). Scores are reshaped to ``[users, 1 + negatives]`` and ranked per user with
  ``trainer.metrics.sampled_ranking_metrics``: HR@10, nDCG@10, MRR and the per-user AUC; a
  negative tied with the positive counts as ranked above it (a constant scorer gets the worst
  rank). A row reports the mean over users and a 95% percentile bootstrap interval over users
  (``trainer.metrics.bootstrap_ci``, same seed for every row, so rows are resampled alike).
* ``train_seconds`` covers build + fit (including validation each epoch); ``score_seconds``
  is ``predict`` over the scored test rows (including its first-call tracing).

``bert_pretrained`` (only with ``--pretrained``): the same BERTRecommender with a pretrained
backbone and its own tokenizer. A pretrained model is slow on a CPU, so it may train on a
seeded subset of whole training impressions (``--pretrained_train_examples``) and be scored on
a seeded subset of users (``--pretrained_eval_users``; its validation uses the same users).
The other rows are always scored on all users; when the subset is used the pretrained row
also carries ``comparison_on_subset``: every other model's metrics on exactly those users,
which is the comparison to read. By default it trains for 1 epoch at learning rate 3e-5
(``PRETRAINED_OVERRIDES``); change that with ``--set_for bert_pretrained:train.epochs=2``.

Outputs in ``--out``: ``quality.json`` ({"protocol": {...}, "rows": [...]}), ``data_info.json``
(what the loader read and skipped) and ``config.yaml`` (the resolved base config).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time

import numpy as np

from trainer import config as config_lib
from trainer import metrics
from trainer.errors import DataError, UserInputError

# TensorFlow (train_lib, datasets) is imported inside run(), after the arguments are checked,
# so --help and usage errors answer at once.

MODELS = ("popularity", "mf", "bert", "bert_pretrained")
METRICS = ("hr@10", "ndcg@10", "mrr", "auc")
KS = (10,)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "movielens.yaml")
# Fine-tuning a pretrained backbone wants a small learning rate; one epoch keeps a CPU run short.
PRETRAINED_OVERRIDES = ["train.epochs=1", "train.learning_rate=3e-5"]
_MODEL_KIND = {"popularity": "popularity", "mf": "mf", "bert": "bert",
               "bert_pretrained": "bert"}


# ---------------------------------------------------------------------------------------
# Pure helpers (numpy only)
# ---------------------------------------------------------------------------------------

def user_matrix(logits, labels, groups):
    """Per-impression scores as a ``[num_impressions, 1 + N]`` matrix, positive in column 0.

    Rows of an impression need not be contiguous; impressions come out sorted by group id
    and the negatives keep their input order. Every impression must have exactly one
    positive and the same number of rows (ValueError otherwise).

    Returns ``(scores, group_ids)``.

    >>> s, g = user_matrix([0.1, 0.9, 0.5, 0.7], [0, 1, 1, 0], [5, 5, 3, 3])
    >>> s.tolist(), g.tolist()
    ([[0.5, 0.7], [0.9, 0.1]], [3, 5])
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not len(logits) == len(labels) == len(groups):
        raise ValueError(f"logits, labels and groups differ in length: {len(logits)}, "
                         f"{len(labels)}, {len(groups)}")
    if len(logits) == 0:
        return np.zeros([0, 0]), groups[:0]
    # lexsort is stable: by group, the positive first, then the negatives in input order.
    order = np.lexsort((-(labels > 0).astype(np.int64), groups))
    ids, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
    if len(set(counts.tolist())) != 1:
        raise ValueError(f"impressions differ in size ({sorted(set(counts.tolist()))}); "
                         "every user needs 1 positive + the same number of negatives")
    positives = np.add.reduceat((labels[order] > 0).astype(np.int64), starts)
    if not (positives == 1).all():
        bad = ids[positives != 1][:5].tolist()
        raise ValueError(f"impressions {bad} do not have exactly one positive")
    return logits[order].reshape(len(ids), int(counts[0])), ids


def regular_groups(labels, groups, size: int):
    """Group ids with exactly one positive and ``size`` rows (the scoreable impressions)."""
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    positives = np.bincount(inverse.reshape(-1), weights=(labels > 0), minlength=len(ids))
    return ids[(counts == size) & (positives == 1)]


def summarize(per_user: dict, rows, bootstrap: int, seed: int) -> dict:
    """Mean and 95% bootstrap CI of each metric over the users indexed by ``rows``."""
    out = {"users_evaluated": int(len(rows)), "ci95": {}}
    for key in METRICS:
        values = per_user[key][rows]
        out[key] = float(values.mean()) if len(values) else float("nan")
        low, high = metrics.bootstrap_ci(values, num_samples=bootstrap, seed=seed)
        out["ci95"][key] = [low, high]
    return out


def format_table(rows: list) -> str:
    """Fixed-width text table of the quality rows."""
    head = (f"{'model':<16}{'hr@10':>8}{'ndcg@10 [95% CI]':>26}{'mrr':>8}{'auc':>8}"
            f"{'users':>7}{'train_s':>9}{'score_s':>9}")
    lines = [head, "-" * len(head)]

    def num(value, width=8, digits=4):
        return f"{'nan':>{width}}" if value is None or math.isnan(value) else \
            f"{value:>{width}.{digits}f}"

    for row in rows:
        low, high = row["ci95"]["ndcg@10"]
        ndcg = f"{row['ndcg@10']:.4f} [{low:.3f}, {high:.3f}]"
        train_s = row.get("train_seconds")
        score_s = row.get("score_seconds")
        lines.append(f"{row['model']:<16}{num(row['hr@10'])}{ndcg:>26}{num(row['mrr'])}"
                     f"{num(row['auc'])}{row['users_evaluated']:>7d}"
                     f"{num(train_s, 9, 1) if train_s is not None else '-':>9}"
                     f"{num(score_s, 9, 1) if score_s is not None else '-':>9}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movielens", choices=["movielens"],
                        help="benchmark dataset (sampled-negative protocol)")
    parser.add_argument("--data_dir", required=True, help="unpacked MovieLens directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="base YAML config")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="dotted override for every model, repeatable")
    parser.add_argument("--set_for", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="override for one model (not data.*), e.g. "
                             "mf:train.learning_rate=1e-2; recorded in its row")
    parser.add_argument("--models", default="",
                        help=f"comma-separated subset of {','.join(MODELS)} (default: "
                             "popularity,mf,bert, plus bert_pretrained with --pretrained)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--pretrained", default="",
                        help="local Hugging Face BERT directory or keras-hub preset")
    parser.add_argument("--pretrained_train_examples", type=int, default=2000,
                        help="training examples for bert_pretrained (whole impressions, "
                             "seeded subset; 0 = all)")
    parser.add_argument("--pretrained_eval_users", type=int, default=0,
                        help="score bert_pretrained on a seeded subset of this many users "
                             "(0 = all); the row then compares all models on that subset")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch training lines")
    return parser


class _Usage(Exception):
    pass


def _models(args) -> list:
    names = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else \
        ["popularity", "mf", "bert"] + (["bert_pretrained"] if args.pretrained else [])
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise _Usage(f"--models: unknown model(s) {unknown}; choose from {','.join(MODELS)}")
    if not names:
        raise _Usage("--models names no model")
    if "bert_pretrained" in names and not args.pretrained:
        raise _Usage("--models bert_pretrained needs --pretrained PATH")
    return list(dict.fromkeys(names))


def _per_model_overrides(args) -> dict:
    out = {name: [] for name in MODELS}
    for item in args.set_for:
        name, sep, override = item.partition(":")
        if not sep or name not in MODELS or "=" not in override:
            raise _Usage(f"--set_for {item!r}: expected MODEL:KEY=VALUE with MODEL one of "
                         f"{','.join(MODELS)}")
        if override.strip().startswith("data."):
            raise _Usage(f"--set_for {item!r}: data.* is shared by every model (the "
                         "protocol); use --set")
        out[name].append(override)
    return out


def _check_pretrained(path: str) -> None:
    if not path or "://" in path:
        return
    looks_like_path = os.sep in path or path.startswith(".") or os.path.exists(path)
    if looks_like_path and not os.path.isfile(os.path.join(path, "config.json")):
        raise _Usage(f"--pretrained {path}: not a Hugging Face model directory (needs "
                     "config.json, model.safetensors and vocab.txt)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        names = _models(args)
        per_model = _per_model_overrides(args)
        if args.bootstrap < 1:
            raise _Usage("--bootstrap must be >= 1")
        _check_pretrained(args.pretrained)
        result = run(args, names, per_model)
    except (_Usage, UserInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n" + format_table(result["rows"]))
    for row in result["rows"]:
        if "comparison_on_subset" in row:
            print(f"\non the {row['users_evaluated']} users {row['model']} was scored on:")
            print(format_table([{"model": name, **values} for name, values in
                                row["comparison_on_subset"].items()]))
    print(f"\nwrote {os.path.join(args.out, 'quality.json')}")
    return 0


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------

def _config(args, overrides: list):
    cfg = config_lib.load_config(args.config, list(args.overrides) + overrides)
    # Set directly rather than as overrides: a path must not be parsed as YAML.
    cfg.data.source = args.dataset
    cfg.data.data_dir = args.data_dir
    config_lib.validate(cfg)
    return cfg


def _subset(table, rows):
    return type(table)(**{f.name: (None if getattr(table, f.name) is None else
                                   getattr(table, f.name)[rows])
                          for f in dataclasses.fields(table)})


def _impression_subset(table, max_examples: int, seed: int):
    """A seeded subset of whole impressions holding at most ``max_examples`` rows."""
    if max_examples <= 0 or len(table) <= max_examples:
        return table
    ids, counts = np.unique(table.group, return_counts=True)
    order = np.random.default_rng([seed, 1]).permutation(len(ids))
    keep = ids[order][np.cumsum(counts[order]) <= max_examples]
    if not len(keep):
        keep = ids[order][:1]
    return _subset(table, np.isin(table.group, keep))


def run(args, names: list, per_model: dict) -> dict:
    """Loads the data once, trains and scores each model; writes and returns quality.json."""
    import keras

    from trainer import distribute, train_lib
    from trainer.datasets.canonical import atomic_write_text, write_json

    base = _config(args, [])
    started = time.time()
    # The same data preparation `train` uses (one id vocabulary, one WordPiece vocabulary).
    prepared = train_lib.prepare_data(base, args.out)
    tables = prepared.tables
    if len(tables["test"]) == 0:
        raise DataError("the test split is empty; check the data and "
                        "data.movielens.min_positives")
    user_of_group = {}
    for name in ("validation", "test"):
        users = [ex.user_id for ex in prepared.splits[name]]
        user_of_group[name] = dict(zip(tables[name].group.tolist(), users))

    negatives = base.data.movielens.eval_negatives
    scored = regular_groups(tables["test"].label, tables["test"].group, 1 + negatives)
    skipped_users = len(np.unique(tables["test"].group)) - len(scored)
    if not len(scored):
        raise DataError(f"no test impression has 1 positive + {negatives} negatives (users "
                        "rated nearly every item?); lower data.movielens.eval_negatives")
    test = _subset(tables["test"], np.isin(tables["test"].group, scored))
    scored_users = np.array([user_of_group["test"][g] for g in scored.tolist()], dtype=object)

    vocabulary = prepared.vocabulary
    if "bert" in names and vocabulary is None:
        raise UserInputError("the bert row learns its vocabulary from the base config: set "
                             "model.kind=bert and no model.pretrained in --config/--set")
    data_seconds = time.time() - started
    info = prepared.info
    ids = prepared.ids
    del prepared

    strategy = distribute.make_strategy(base.runtime)
    seed = base.data.movielens.seed
    eval_subset = None  # row indices (into scored users) of the pretrained user subset
    per_user_all, rows = {}, []
    for name in names:
        overrides = [f"model.kind={_MODEL_KIND[name]}"]
        if name == "bert":
            overrides.append("model.pretrained=''")
        if name == "bert_pretrained":
            overrides += PRETRAINED_OVERRIDES
        cfg = _config(args, overrides + per_model[name])
        if name == "bert_pretrained":
            cfg.model.pretrained = args.pretrained  # a path, so not a YAML override
        model_tables = {"train": tables["train"], "validation": tables["validation"],
                        "test": test}
        users_rows = np.arange(len(scored))
        if name == "bert_pretrained":
            model_tables["train"] = _impression_subset(
                tables["train"], args.pretrained_train_examples, seed)
            if 0 < args.pretrained_eval_users < len(scored):
                rng = np.random.default_rng([seed, 2])
                users_rows = np.sort(rng.choice(len(scored), args.pretrained_eval_users,
                                                replace=False))
                eval_subset = users_rows
                chosen = set(scored_users[users_rows].tolist())
                model_tables["test"] = _subset(test, np.isin(test.group, scored[users_rows]))
                val = tables["validation"]
                val_users = np.array([user_of_group["validation"][g]
                                      for g in val.group.tolist()], dtype=object)
                model_tables["validation"] = _subset(
                    val, np.array([u in chosen for u in val_users], dtype=bool))
        packer = train_lib.make_packer(cfg, None if cfg.model.pretrained else vocabulary)

        print(f"\n== {name}: {len(model_tables['train'])} training examples, "
              f"{cfg.train.epochs} epoch(s) ==", flush=True)
        keras.utils.set_random_seed(cfg.train.seed)
        t0 = time.time()
        with strategy.scope():
            model = train_lib.build_model(cfg, packer, ids, model_tables["train"])
        fitted = train_lib.fit_model(cfg, model, model_tables, packer, strategy,
                                     verbose=0 if args.quiet else 2)
        train_seconds = time.time() - t0
        t0 = time.time()
        logits = train_lib.predict_logits(model, model_tables["test"], packer,
                                          cfg.train.eval_batch_size)
        score_seconds = time.time() - t0
        matrix, groups = user_matrix(logits, model_tables["test"].label,
                                     model_tables["test"].group)
        assert np.array_equal(groups, scored[users_rows])  # same users, same order
        per_user_rows = metrics.sampled_ranking_metrics(matrix, positive_index=0, ks=KS)
        per_user = {k: np.full(len(scored), np.nan) for k in METRICS}
        for key in METRICS:
            per_user[key][users_rows] = per_user_rows[key]
        per_user_all[name] = per_user

        row = {"model": name, **summarize(per_user, users_rows, args.bootstrap, seed),
               "candidates_per_user": int(matrix.shape[1]),
               "train_seconds": round(train_seconds, 2),
               "score_seconds": round(score_seconds, 2),
               "settings": _settings(cfg, fitted, model_tables, model),
               "overrides": (PRETRAINED_OVERRIDES if name == "bert_pretrained" else [])
               + per_model[name]}
        if name == "bert_pretrained":
            row["settings"]["pretrained"] = args.pretrained
            row["settings"]["eval_users_subset"] = eval_subset is not None
        rows.append(row)
        print(f"   {name}: hr@10 {row['hr@10']:.4f}  ndcg@10 {row['ndcg@10']:.4f}  "
              f"train {train_seconds:.1f} s  score {score_seconds:.1f} s", flush=True)
        keras.backend.clear_session()  # free the graph before the next model

    if eval_subset is not None:
        for row in rows:
            if row["model"] == "bert_pretrained":
                row["comparison_on_subset"] = {
                    name: summarize(per_user_all[name], eval_subset, args.bootstrap, seed)
                    for name in names}

    ml = base.data.movielens
    protocol = {
        "dataset": args.dataset, "data_dir": args.data_dir, "variant": info.get("variant"),
        "config": args.config, "overrides": list(args.overrides),
        "split": "leave-last-out chronological",
        "positive_threshold": ml.positive_threshold, "min_positives": ml.min_positives,
        "users_evaluated": int(len(scored)), "users_skipped_short_impressions": skipped_users,
        "negatives_per_user": negatives, "candidates_per_user": negatives + 1,
        "eval_negative_sampling": "uniform over items the user never rated, seeded",
        "train_negatives_per_positive": ml.negatives_per_positive,
        "train_negative_sampling": ml.negative_sampling,
        "train_examples": len(tables["train"]),
        "max_train_examples": ml.max_train_examples,
        "seed": ml.seed, "train_seed": base.train.seed,
        "bootstrap_samples": args.bootstrap, "bootstrap_seed": seed, "confidence": 0.95,
        "ks": list(KS),
        "ties": "a negative tied with the positive ranks above it (pessimistic)",
        "metrics": "mean over users of per-user HR@10, nDCG@10, MRR, AUC "
                   "(trainer.metrics.sampled_ranking_metrics)",
        "data_seconds": round(data_seconds, 2),
        "replicas": strategy.num_replicas_in_sync,
    }
    if "bert_pretrained" in names:
        protocol["pretrained_eval_users"] = (int(len(eval_subset)) if eval_subset is not None
                                             else int(len(scored)))
        protocol["pretrained_note"] = (
            "bert_pretrained is scored on a seeded subset of users (its validation uses the "
            "same users); its row's comparison_on_subset gives every model on that subset"
            if eval_subset is not None else "bert_pretrained is scored on all users")
    result = {"protocol": protocol, "rows": rows}
    write_json(os.path.join(args.out, "quality.json"), result, sort_keys=False)
    write_json(os.path.join(args.out, "data_info.json"), info)
    atomic_write_text(os.path.join(args.out, "config.yaml"), config_lib.dump_yaml(base))
    return result


def _settings(cfg, fitted: dict, tables: dict, model) -> dict:
    m, t = cfg.model, cfg.train
    settings = {"kind": m.kind, "train_examples": len(tables["train"]),
                "validation_examples": len(tables["validation"]),
                "epochs": t.epochs, "epochs_run": fitted["epochs_run"],
                "steps_per_epoch": fitted["steps_per_epoch"], "batch_size": t.batch_size,
                "learning_rate": t.learning_rate,
                "parameters": int(model.count_params())}
    if m.kind == "mf":
        settings.update(embedding_dim=m.embedding_dim, l2=m.l2)
    if m.kind == "bert" and not m.pretrained:
        settings.update(num_layers=m.num_layers, hidden_dim=m.hidden_dim,
                        num_heads=m.num_heads, intermediate_dim=m.intermediate_dim,
                        vocab_size=cfg.data.vocab_size)
    if m.kind == "bert":
        settings.update(sequence_length=cfg.data.sequence_length, pooling=m.pooling,
                        item_text_fields=list(cfg.data.item_text_fields))
    if fitted["history"].get("val_auc"):
        settings["best_val_auc"] = max(fitted["history"]["val_auc"])
    return settings


if __name__ == "__main__":
    sys.exit(main())
