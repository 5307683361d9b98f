"""RecBole peer runner for the quality benchmark: trains one RecBole sequential model on the
benchmark's own split and writes its catalogue scores for the test users.

This script runs inside the RecBole virtual environment made by ``benchmarks.recbole_peer``
(torch + recbole, no TensorFlow). It imports only torch, numpy, recbole and the standard
library and nothing from this repository, so that environment's python runs it on its own:

    python recbole_runner.py --data_dir DIR --model SASRec --out OUT \\
        [--learning_rates 0.0003,0.001,0.003] [--epochs 300] [--threads 2] [--seed 2020]

``DIR`` holds what ``recbole_peer.write_split`` wrote: ``split.json`` and the RecBole
atomic files ``DIR/<name>/<name>.{train,valid,test}.inter`` (``user_id:token``,
``item_id_list:token_seq``, ``item_id:token``) and ``<name>.item`` (every catalogue item, so
RecBole's item vocabulary is the benchmark's catalogue).

What it runs, RecBole's documented settings for these files (``benchmark_filename``
[train, valid, test], ``alias_of_item_id: [item_id_list]``, as UniSRec's configs load them):
the model's own defaults (``recbole/properties/model/<Model>.yaml``: SASRec 2 layers, 2
heads, hidden 64, dropout 0.5, CE loss; GRU4Rec embedding 64, hidden 128, dropout 0.3, CE
loss), RecBole's overall defaults (Adam, batch 2048, ``epochs`` 300, ``stopping_step`` 10,
``eval_step`` 1, seed 2020, ``MAX_ITEM_LIST_LENGTH`` 50), full-sort evaluation, metrics
Recall and NDCG at ``topk`` [10, 50], ``valid_metric`` NDCG@10 (validation every epoch,
the best epoch's weights restored for the test; ``eval_args`` left at RecBole's default
full-sort mode, its split settings being unused with benchmark files), no training
negatives (CE over every item). For each learning rate of ``--learning_rates`` one full run; the rate whose best
validation NDCG@10 is highest is chosen (the first on a tie).

Outputs in ``OUT``:

* ``scores.npy``: float32 ``[len(split["test_users"]), len(split["item_tokens"]) + 1]``,
  the chosen run's ``full_sort_predict`` scores (its best epoch's weights). Row ``r`` is
  the user ``split["test_users"][r]`` (the benchmark's test-user order), column ``c >= 1``
  the item ``split["item_tokens"][c - 1]`` (the benchmark's item order), column 0 (no
  item) ``-inf``. A test user RecBole has no row for (no history) gets a row of zeros.
* ``result.json``: versions, the settings, every learning rate's run (best validation
  result, best epoch, epochs run, RecBole's own test result, seconds: total, to the best
  epoch, per epoch) and the chosen one; RecBole's test figures are its own evaluator's
  (its protocol: no history masked, its tie order).
* ``log/``, ``log_tensorboard/`` and ``checkpoints-*/``: what RecBole writes on its own.

Progress lines start with ``recbole_runner:``; everything RecBole logs goes to stderr.
A failure exits 1 after printing the traceback.
"""

import argparse
import itertools
import json
import math
import os
import sys
import time
import traceback

PREFIX = "recbole_runner:"
MODELS = ("SASRec", "GRU4Rec")
# The settings that make RecBole read the benchmark files and evaluate as documented.
FILE_SETTINGS = {
    "benchmark_filename": ["train", "valid", "test"],
    "load_col": {"inter": ["user_id", "item_id_list", "item_id"], "item": ["item_id"]},
    "alias_of_item_id": ["item_id_list"],
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "field_separator": "\t",
    "seq_separator": " ",
}
EVAL_SETTINGS = {
    "metrics": ["Recall", "NDCG"],
    "topk": [10, 50],
    "valid_metric": "NDCG@10",
    "stopping_step": 10,
    "eval_step": 1,
    "loss_type": "CE",
    "train_neg_sample_args": None,
}
REPORTED_KEYS = ("epochs", "train_batch_size", "eval_batch_size", "learner", "stopping_step",
                 "eval_step", "valid_metric", "metrics", "topk", "loss_type", "seed",
                 "MAX_ITEM_LIST_LENGTH", "weight_decay", "n_layers", "n_heads", "hidden_size",
                 "inner_size", "hidden_dropout_prob", "attn_dropout_prob", "hidden_act",
                 "embedding_size", "num_layers", "dropout_prob")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="recbole_runner.py", description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--out", required=True)
    p.add_argument("--learning_rates", default="0.0003,0.001,0.003")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's own)")
    p.add_argument("--seed", type=int, default=2020)
    args = p.parse_args(argv)
    args.learning_rates = [float(v) for v in args.learning_rates.split(",") if v.strip()]
    if not args.learning_rates or any(not lr > 0 for lr in args.learning_rates):
        p.error("--learning_rates needs one or more positive numbers")
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    return args


def say(message):
    print(f"{PREFIX} {message}", flush=True)


def _number(value):
    value = float(value)
    return value if math.isfinite(value) else None


class _Timed:
    """Wraps a RecBole trainer's epoch methods to record each epoch's seconds and the
    epochs whose weights were saved (the best so far)."""

    def __init__(self, trainer):
        self.train_seconds, self.valid_seconds, self.saved_epochs = [], [], []
        self.valid_scores = []
        train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch
        save = trainer._save_checkpoint

        def timed_train(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return train_epoch(*args, **kwargs)
            finally:
                self.train_seconds.append(time.perf_counter() - t0)

        def timed_valid(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                result = valid_epoch(*args, **kwargs)
                self.valid_scores.append(float(result[0]))  # (valid_score, valid_result)
                return result
            finally:
                self.valid_seconds.append(time.perf_counter() - t0)

        def saving(epoch, *args, **kwargs):
            self.saved_epochs.append(int(epoch))
            return save(epoch, *args, **kwargs)

        trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
        trainer._save_checkpoint = saving

    def summary(self, total):
        valid = self.valid_seconds + [0.0] * (len(self.train_seconds) -
                                              len(self.valid_seconds))
        epochs = [t + v for t, v in zip(self.train_seconds, valid)]
        best = self.saved_epochs[-1] if self.saved_epochs else len(epochs) - 1
        elapsed = list(itertools.accumulate(epochs))
        return {"epochs_run": len(self.train_seconds), "best_epoch": best + 1,
                # [seconds since training began, validation NDCG@10] after each epoch.
                "validation_curve": [[round(t, 2), round(v, 5)] for t, v in
                                     zip(elapsed, self.valid_scores)],
                "seconds": {"total": round(total, 2),
                            "to_best_epoch": round(sum(epochs[:best + 1]), 2),
                            "per_epoch": round(sum(epochs) / max(len(epochs), 1), 3),
                            "per_epoch_train": round(sum(self.train_seconds) /
                                                     max(len(self.train_seconds), 1), 3),
                            "per_epoch_validation": round(sum(self.valid_seconds) /
                                                          max(len(self.valid_seconds), 1),
                                                          3)}}


def catalogue_scores(model, test_data, dataset, split, torch, np):
    """The test users' full-sort scores in the benchmark's user and item order (see the
    module docstring); also how many test rows RecBole had and which users it lacked."""
    item_tokens = split["item_tokens"]
    column_of = {token: c + 1 for c, token in enumerate(item_tokens)}
    id_tokens = dataset.field2id_token["item_id"]
    # RecBole item id -> benchmark column (0: padding and items outside the catalogue).
    columns = np.array([column_of.get(str(t), 0) for t in id_tokens], dtype=np.int64)
    known = np.flatnonzero(columns > 0)
    user_tokens = dataset.field2id_token["user_id"]
    row_of = {token: r for r, token in enumerate(split["test_users"])}
    target_of = split["test_targets"]
    out = np.zeros([len(split["test_users"]), len(item_tokens) + 1], dtype=np.float32)
    out[:, 0] = -np.inf
    filled = np.zeros(len(split["test_users"]), dtype=bool)
    rows = 0
    model.eval()
    with torch.no_grad():
        for batch in test_data:
            interaction = batch[0]
            scores = model.full_sort_predict(interaction).reshape(len(interaction), -1)
            scores = scores.detach().cpu().numpy()
            users = interaction["user_id"].cpu().numpy()
            targets = interaction["item_id"].cpu().numpy()
            for i, (user, target) in enumerate(zip(users, targets)):
                rows += 1
                row = row_of.get(str(user_tokens[user]))
                if row is None:
                    continue  # a test row of a user the benchmark does not score
                if filled[row]:
                    raise ValueError(f"user {user_tokens[user]!r} has two test rows")
                if str(id_tokens[target]) != target_of[row]:
                    raise ValueError(f"user {user_tokens[user]!r}: RecBole's test target "
                                     f"{id_tokens[target]!r} is not the benchmark's "
                                     f"{target_of[row]!r}")
                out[row, columns[known]] = scores[i, known]
                filled[row] = True
    return out, rows, [split["test_users"][r] for r in np.flatnonzero(~filled)]


def run(args):
    # RecBole writes ./log and ./log_tensorboard under the working directory.
    os.makedirs(args.out, exist_ok=True)
    os.chdir(args.out)
    # RecBole 1.2.1 reloads its own checkpoints (which hold its Config object) with
    # torch.load, whose default became weights_only=True in torch 2.6.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    import numpy as np
    import recbole
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with open(os.path.join(args.data_dir, "split.json"), encoding="utf-8") as f:
        split = json.load(f)
    runs, best, best_scores = [], None, None
    started = time.perf_counter()
    for lr in args.learning_rates:
        config_dict = {**FILE_SETTINGS, **EVAL_SETTINGS,
                       "data_path": os.path.abspath(args.data_dir),
                       "MAX_ITEM_LIST_LENGTH": int(split["max_item_list_length"]),
                       "epochs": args.epochs, "learning_rate": lr, "seed": args.seed,
                       "reproducibility": True, "use_gpu": False, "show_progress": False,
                       "log_wandb": False,
                       "checkpoint_dir": os.path.abspath(f"checkpoints-lr{lr:g}")}
        config = Config(model=args.model, dataset=split["name"], config_dict=config_dict)
        init_seed(config["seed"], config["reproducibility"])
        init_logger(config)
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        timed = _Timed(trainer)
        say(f"{args.model} lr {lr:g}: {len(train_data.dataset)} training rows, "
            f"{dataset.item_num - 1} items, {len(test_data.dataset)} test rows")
        t0 = time.perf_counter()
        best_valid, best_valid_result = trainer.fit(train_data, valid_data, saved=True,
                                                    show_progress=False, verbose=True)
        fit_seconds = time.perf_counter() - t0
        test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
        entry = {"learning_rate": lr, "best_valid_ndcg@10": _number(best_valid),
                 "train_rows": len(train_data.dataset),
                 "best_valid_result": {k: _number(v) for k, v in
                                       (best_valid_result or {}).items()},
                 "test_result": {k: _number(v) for k, v in test_result.items()},
                 **timed.summary(fit_seconds)}
        runs.append(entry)
        say(f"{args.model} lr {lr:g}: best validation NDCG@10 {best_valid:.4f} at epoch "
            f"{entry['best_epoch']} of {entry['epochs_run']} ({fit_seconds:.0f} s); "
            f"RecBole's test {dict(entry['test_result'])}")
        if best is None or best_valid > best["best_valid_ndcg@10"]:
            t0 = time.perf_counter()
            scores, test_rows, missing = catalogue_scores(model, test_data, dataset, split,
                                                          torch, np)
            best = dict(entry, score_seconds=round(time.perf_counter() - t0, 2),
                        recbole_test_rows=test_rows, users_without_scores=missing,
                        parameters=int(sum(p.numel() for p in model.parameters())),
                        settings={k: (config[k] if k in config.final_config_dict else None)
                                  for k in REPORTED_KEYS})
            best_scores = scores
        del trainer, model, train_data, valid_data, test_data, dataset
    np.save(os.path.join(args.out, "scores.npy"), best_scores)
    result = {"model": args.model, "recbole": recbole.__version__,
              "torch": torch.__version__, "numpy": np.__version__,
              "threads": torch.get_num_threads(), "learning_rates": args.learning_rates,
              "chosen_learning_rate": best["learning_rate"], "chosen": best, "runs": runs,
              "seconds_total": round(time.perf_counter() - started, 2),
              "settings": {**{k: v for k, v in FILE_SETTINGS.items()},
                           **{k: v for k, v in EVAL_SETTINGS.items()},
                           **{k: v for k, v in best["settings"].items() if v is not None}}}
    best.pop("settings")
    result["settings"] = {k: (v if isinstance(v, (int, float, str, list, dict, type(None)))
                              else str(v)) for k, v in result["settings"].items()}
    tmp = os.path.join(args.out, "result.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(args.out, "result.json"))
    say(f"{args.model}: chose lr {best['learning_rate']:g}; wrote scores.npy "
        f"{list(best_scores.shape)} and result.json")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except BaseException as exc:  # noqa: BLE001 -- reported, then a non-zero exit
        traceback.print_exception(exc, file=sys.stderr)
        say(f"error: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
