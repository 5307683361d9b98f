"""RecBole as a peer of the quality benchmark: its environment, the split it reads, the
run and the read-back of its scores.

``benchmarks.quality --models recbole_sasrec,recbole_gru4rec`` (not in the default rows)
adds RecBole's SASRec and GRU4Rec (RecBole 1.2.1) beside our rows, so that nothing differs
but the model:

1. **Environment** (:func:`ensure_env`): RecBole runs in its own virtual environment and its
   own process, never in this one, for the reasons ``benchmarks/peer_env.py`` gives for the
   torch peer (TensorFlow and torch in one process fight over threads; the pins differ).
   The environment is made once by ``peer_env.ensure_peer_env`` with :data:`REQUIREMENTS`
   and a marker; later calls with the same pins return at once.
2. **The same split** (:func:`write_split`), as RecBole atomic benchmark files
   ``<name>.{train,valid,test}.inter`` (``user_id:token``, ``item_id_list:token_seq``,
   ``item_id:token``; RecBole's ``benchmark_filename: [train, valid, test]``) plus
   ``<name>.item`` listing every catalogue item (so RecBole's item vocabulary is our
   catalogue, and it ranks the same candidates), and ``split.json`` mapping RecBole's
   tokens to our user order and item columns.

   * Sequential-benchmark files (``--dataset scientific`` / ``sequences``, no cold-start
     items): the files themselves are linked, as they are: they *are* the split we
     evaluate (trainer/data/sequences.py reads their rows as impressions).
   * Any other source (MovieLens): one row per *positive example of our prepared split*
     (``PreparedData.splits``), in our order: each training positive with its history
     (the user's earlier positives, most recent last), each user's validation positive,
     and the test positive of every user the benchmark scores, in the benchmark's user
     order. Why benchmark files and not one ``.inter`` with timestamps and RecBole's
     leave-one-out split: RecBole's ``LS`` split and sequential augmentation would rebuild
     the split from timestamps with its own tie order and its own handling of the users
     our loader drops (``min_positives``, ratings under the threshold, a training subset
     by ``max_train_examples``), so it could train or test on rows we do not. Written as
     rows, the training prefixes are exactly what RecBole's augmentation would make from
     our training positives (each prefix predicts the next item, histories capped at the
     ``MAX_ITEM_LIST_LENGTH`` = 50 most recent, no row without history), the
     validation/test rows are our held-out positives, and nothing else is read.
   * A row whose history is empty is left out (RecBole's augmentation never makes one,
     and its sequential models index the last history position); a test user without
     history then gets constant scores, the worst rank under our ties, and is counted.

3. **The run** (:func:`run_peer`): ``benchmarks/recbole_runner.py`` in the environment's
   python trains the model with RecBole's documented defaults and a small learning-rate
   search on validation NDCG@10 (:data:`LEARNING_RATES`), then writes the chosen run's
   full-sort scores of the test users (float32, our user order, our item columns).
4. **Read-back** (:func:`benchmark_row`): the scores go through *our* metric code, as every
   other row's catalogue logits do: ``metrics.full_ranking_metrics`` with the benchmark's
   exclusions (MovieLens: every item the user rated; the sequential benchmarks: none), the
   same pessimistic ties and bootstrap, and the sampled metrics on the same sampled
   candidates; the per-user arrays feed the paired differences. RecBole's own evaluator's
   figures (its protocol: nothing masked for a sequential model, its own tie order) are
   kept beside them in ``recbole_reported``, with ours computed under that protocol
   (``ours_unmasked``) so the two can be checked against each other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import numpy as np

from benchmarks import peer_env

# Row name -> RecBole model class.
ROWS = {"recbole_sasrec": "SASRec", "recbole_gru4rec": "GRU4Rec"}
DEFAULT_VENV = "/tmp/recbole_venv"
# Around RecBole's default 0.001, chosen by the best validation NDCG@10.
LEARNING_RATES = (3e-4, 1e-3, 3e-3)
EPOCHS = 300  # RecBole's default; early stopping (10 epochs without a better NDCG@10) ends runs
SEED = 2020  # RecBole's default
MAX_ITEM_LIST_LENGTH = 50  # RecBole's default; the Scientific files cap histories at 50 too
# Verified to install and import together on Python 3.11 (recbole's ray and tensorboard
# imports need numpy<2, pandas<2.3 and setuptools<81). ray, scipy and tensorboard are on
# RecBole's import path, so they are pinned too; the rest of the tree is left to pip.
REQUIREMENTS = [
    peer_env.TORCH_REQUIREMENT,
    "recbole==1.2.1",
    "numpy==1.26.4",
    "pandas==2.2.3",
    "setuptools==80.10.2",
    "scipy==1.17.1",
    "ray==2.6.3",
    "tensorboard==2.21.0",
]
CHECK_CODE = ("import json, numpy, pandas, torch, recbole; "
              "from recbole.model.sequential_recommender import SASRec, GRU4Rec; "
              "from recbole.quick_start import run_recbole; "
              "print(json.dumps({'recbole': recbole.__version__, 'torch': torch.__version__, "
              "'numpy': numpy.__version__, 'pandas': pandas.__version__}))")
RUNNER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recbole_runner.py")
RUNNER_PREFIX = "recbole_runner:"
SPLIT_FILE = "split.json"
# Our split -> RecBole's benchmark file suffix.
PARTS = {"train": "train", "validation": "valid", "test": "test"}
INTER_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"
ITEM_HEADER = "item_id:token"
LOG_TAIL_LINES = 40


class RecBoleError(RuntimeError):
    """The RecBole peer could not be installed or run (the message says which command)."""


# --- the environment -------------------------------------------------------------------------

def ensure_env(path: str = DEFAULT_VENV, log=print) -> str:
    """Make RecBole's virtual environment at ``path`` if needed (``REQUIREMENTS``, one pip
    install, a marker); return its python. RecBoleError if it cannot be made."""
    try:
        return peer_env.ensure_peer_env(path, log=log, requirements=REQUIREMENTS,
                                        check_code=CHECK_CODE)
    except (RuntimeError, OSError) as exc:
        raise RecBoleError(f"could not create RecBole's virtual environment at {path} "
                           f"(--recbole_venv; it needs Python 3.11's venv and pip access to "
                           f"{' '.join(REQUIREMENTS)}): {exc}") from None


# --- the split as RecBole atomic files -------------------------------------------------------

def _check_token(token: str, what: str) -> str:
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{what} {token!r} cannot be a RecBole token (empty or whitespace)")
    return token


def _inter_line(user: str, history, target: str) -> str:
    return f"{user}\t{' '.join(history)}\t{target}\n"


def _read_index(path: str) -> list:
    """The original ids of a ``.item2index`` / ``.user2index`` file, by index."""
    by_index = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                original, index = line.rstrip("\r\n").split("\t")
                by_index[int(index)] = original.strip()
    return [by_index[i] for i in range(len(by_index))]


def _read_inter(path: str) -> list:
    """``(user token, history tokens, target token)`` of every row of a benchmark file."""
    with open(path, encoding="utf-8") as f:
        header = [cell.split(":", 1)[0].strip() for cell in f.readline().rstrip("\r\n")
                  .split("\t")]
        at = [header.index(name) for name in ("user_id", "item_id_list", "item_id")]
        rows = []
        for line in f:
            if line.strip():
                cells = line.rstrip("\r\n").split("\t")
                rows.append((cells[at[0]].strip(), cells[at[1]].split(),
                             cells[at[2]].strip()))
    return rows


def _write_lines(path: str, header: str, lines) -> None:
    if os.path.lexists(path):
        # A link left by an earlier run points into the data directory: never write
        # through it.
        os.remove(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        f.writelines(lines)


def write_split(directory: str, name: str, splits: dict, item_columns: dict, test_users,
                test_targets, *, sequences_dir: str | None = None,
                max_history: int = MAX_ITEM_LIST_LENGTH) -> dict:
    """Writes the benchmark's split as RecBole benchmark files; returns ``split.json``.

    Args:
        directory: where to write (``<directory>/<name>/<name>.*`` and
            ``<directory>/split.json``); RecBole's ``data_path`` is ``directory``.
        name: the dataset name (the files' prefix).
        splits: our prepared examples by split (``PreparedData.splits``: objects with
            ``user_id``, ``history`` (item ids, most recent last), ``candidate`` and
            ``label``; positives are ``label > 0``). Not read with ``sequences_dir``.
        item_columns: item id -> its column of the benchmark's scores (1..N, dense:
            ``IdVocabulary.items``).
        test_users: the user ids the benchmark scores, in its order.
        test_targets: each of those users' held-out item column, same order.
        sequences_dir: the directory of sequential-benchmark files named ``name`` (their
            ``.inter`` files are linked as they are; tokens are their 0-based indices).
        max_history: RecBole's ``MAX_ITEM_LIST_LENGTH``: longer histories keep their most
            recent entries (the loaders here already cap them at 50).

    ``split.json``: ``name``, ``mode`` (``linked`` or ``written``), ``item_tokens`` (the
    RecBole token of column c at position c - 1), ``test_users`` / ``test_targets`` (tokens,
    our order), ``max_item_list_length``, ``rows`` per file, ``rows_without_history``
    (left out), ``histories_truncated`` and ``test_users_without_history``.
    """
    folder = os.path.join(directory, name)
    os.makedirs(folder, exist_ok=True)
    columns = sorted(item_columns.values())
    if columns != list(range(1, len(columns) + 1)):
        raise ValueError("item_columns must number the catalogue 1..N")
    item_of_column = {c: item for item, c in item_columns.items()}
    test_targets = [int(t) for t in test_targets]
    test_users = list(test_users)
    if len(test_users) != len(test_targets) or len(set(test_users)) != len(test_users):
        raise ValueError("test_users must be distinct and match test_targets one to one")
    if sequences_dir:
        info = _link_sequence_files(folder, name, sequences_dir, item_of_column, test_users,
                                    test_targets, max_history)
    else:
        info = _write_rows(folder, name, splits, item_columns, test_users, test_targets,
                           max_history)
    _write_lines(os.path.join(folder, f"{name}.item"), ITEM_HEADER,
                 (f"{token}\n" for token in info["item_tokens"]))
    info = {"name": name, **info, "max_item_list_length": int(max_history),
            "files": [f"{name}/{name}.{part}.inter" for part in PARTS.values()]
            + [f"{name}/{name}.item"]}
    tmp = os.path.join(directory, SPLIT_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    os.replace(tmp, os.path.join(directory, SPLIT_FILE))
    return info


def _write_rows(folder, name, splits, item_columns, test_users, test_targets,
                max_history) -> dict:
    """Our prepared positives as benchmark rows (tokens: item columns, user numbers)."""
    users = sorted({ex.user_id for examples in splits.values() for ex in examples}
                   | set(test_users))
    user_token = {user: str(k) for k, user in enumerate(users)}
    rows, without, truncated = {}, {}, 0
    test_rows, wanted = {}, set(test_users)
    for split, part in PARTS.items():
        lines = []
        without[part] = 0
        for ex in splits.get(split, []):
            if not ex.label > 0:
                continue
            if split == "test" and ex.user_id not in wanted:
                continue  # a user the benchmark does not score
            history = [str(item_columns[item]) for item in ex.history]
            truncated += len(history) > max_history
            history = history[max(0, len(history) - max_history):]
            target = str(item_columns[ex.candidate])
            if split == "test":
                if ex.user_id in test_rows:
                    raise ValueError(f"user {ex.user_id!r} has two test positives")
                test_rows[ex.user_id] = (history, target)
                continue
            if not history:
                without[part] += 1
                continue
            lines.append(_inter_line(user_token[ex.user_id], history, target))
        if split == "test":
            # In the benchmark's user order.
            for user, column in zip(test_users, test_targets):
                if user not in test_rows:
                    raise ValueError(f"test user {user!r} has no test positive")
                history, target = test_rows[user]
                if target != str(column):
                    raise ValueError(f"test user {user!r}: the examples' test item (column "
                                     f"{target}) is not the benchmark's ({column})")
                if not history:
                    without[part] += 1
                    continue
                lines.append(_inter_line(user_token[user], history, target))
        _write_lines(os.path.join(folder, f"{name}.{part}.inter"), INTER_HEADER, lines)
        rows[part] = len(lines)
    return {"mode": "written",
            "item_tokens": [str(c) for c in range(1, len(item_columns) + 1)],
            "test_users": [user_token[u] for u in test_users],
            "test_targets": [str(c) for c in test_targets],
            "rows": rows, "rows_without_history": without,
            "histories_truncated": truncated,
            "test_users_without_history": without["test"]}


def _link_sequence_files(folder, name, sequences_dir, item_of_column, test_users,
                         test_targets, max_history) -> dict:
    """Links the ``.inter`` files as they are (rewritten only if a row has no history or
    a longer one than RecBole reads, which then is said); maps our users and columns to
    their index tokens."""
    prefix = os.path.join(sequences_dir, name)
    item_index = {item: k for k, item in enumerate(_read_index(f"{prefix}.item2index"))}
    missing = [item for item in item_of_column.values() if item not in item_index]
    if missing:
        raise ValueError(f"{prefix}.item2index lacks catalogue item(s) {missing[:5]}")
    item_tokens = [str(item_index[item_of_column[c]])
                   for c in range(1, len(item_of_column) + 1)]
    user_path = f"{prefix}.user2index"
    if os.path.exists(user_path):
        user_token = {user: str(k) for k, user in enumerate(_read_index(user_path))}
    else:
        user_token = {user: user for user in test_users}
    rows, without, truncated, rewritten = {}, {}, 0, []
    test_of = {}
    for part in PARTS.values():
        source = os.path.abspath(f"{prefix}.{part}.inter")
        target = os.path.join(folder, f"{name}.{part}.inter")
        content = _read_inter(source)
        empty = sum(1 for _, history, _ in content if not history)
        long = sum(1 for _, history, _ in content if len(history) > max_history)
        without[part], truncated = empty, truncated + long
        if os.path.lexists(target):
            os.remove(target)
        if empty or long:
            rewritten.append(part)
            _write_lines(target, INTER_HEADER, (
                _inter_line(u, h[max(0, len(h) - max_history):], t) for u, h, t in content if h))
        else:
            try:
                os.symlink(source, target)
            except OSError:
                shutil.copyfile(source, target)
        rows[part] = len(content) - empty
        if part == "test":
            for user, history, item in content:
                if user in test_of:
                    raise ValueError(f"{source}: user {user!r} has two test rows")
                test_of[user] = (history, item)
    users, targets, no_history = [], [], 0
    for user, column in zip(test_users, test_targets):
        token = _check_token(user_token.get(user, ""), f"test user {user!r}")
        if token not in test_of:
            raise ValueError(f"{prefix}.test.inter has no row of test user {user!r}")
        history, item = test_of[token]
        if item != item_tokens[column - 1]:
            raise ValueError(f"test user {user!r}: {prefix}.test.inter's target {item} is not "
                             f"the benchmark's item ({item_of_column[column]})")
        no_history += not history
        users.append(token)
        targets.append(item)
    return {"mode": "linked" if not rewritten else "linked, " + ", ".join(rewritten)
            + " rewritten without rows lacking history", "source_dir": sequences_dir,
            "item_tokens": item_tokens, "test_users": users, "test_targets": targets,
            "rows": rows, "rows_without_history": without, "histories_truncated": truncated,
            "test_users_without_history": no_history}


# --- the run ---------------------------------------------------------------------------------

def runner_command(python: str, model: str, data_dir: str, out_dir: str, *,
                   learning_rates=LEARNING_RATES, epochs: int = EPOCHS, threads: int = 0,
                   seed: int = SEED, script: str | None = None) -> list:
    """The command that runs ``recbole_runner.py`` (``-I``: nothing from this repository or
    from PYTHON* variables reaches RecBole's interpreter)."""
    return [python, "-I", "-u", script or RUNNER_SCRIPT, "--data_dir", os.path.abspath(data_dir),
            "--model", model, "--out", os.path.abspath(out_dir),
            "--learning_rates", ",".join(f"{lr:g}" for lr in learning_rates),
            "--epochs", str(int(epochs)), "--threads", str(int(threads)),
            "--seed", str(int(seed))]


def run_peer(python: str, row: str, data_dir: str, out_dir: str, log=print, *,
             learning_rates=LEARNING_RATES, epochs: int = EPOCHS, threads: int = 0,
             seed: int = SEED, script: str | None = None, timeout: float | None = None,
             env: dict | None = None) -> dict:
    """Runs the RecBole row ``row`` (a key of :data:`ROWS`) on the files in ``data_dir``;
    returns its ``result.json``. The runner's output goes to ``out_dir/runner.log``; its
    progress lines are passed to ``log``. RecBoleError (with the log's tail) if it fails."""
    os.makedirs(out_dir, exist_ok=True)
    cmd = runner_command(python, ROWS[row], data_dir, out_dir, learning_rates=learning_rates,
                         epochs=epochs, threads=threads, seed=seed, script=script)
    run_env = dict(os.environ if env is None else env)
    if threads > 0:
        run_env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    log_path = os.path.join(out_dir, "runner.log")
    for stale in ("result.json", "scores.npy"):
        if os.path.exists(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    deadline = None if timeout is None else time.monotonic() + timeout
    with open(log_path, "w", encoding="utf-8", buffering=1) as out:
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                    env=run_env)
        except OSError as exc:
            raise RecBoleError(f"could not start {' '.join(cmd)}: {exc}") from None
        try:
            for line in proc.stdout:
                out.write(line)
                if line.startswith(RUNNER_PREFIX):
                    log(f"   {row}: {line[len(RUNNER_PREFIX):].strip()}")
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    break
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0 or not os.path.exists(os.path.join(out_dir, "result.json")):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-LOG_TAIL_LINES:])
        what = "timed out" if deadline is not None and time.monotonic() > deadline else \
            f"failed (exit {code})"
        raise RecBoleError(f"the RecBole runner {what}: {' '.join(cmd)}\n(log: {log_path})\n"
                           f"{tail}")
    with open(os.path.join(out_dir, "result.json"), encoding="utf-8") as f:
        return json.load(f)


# --- read-back -------------------------------------------------------------------------------

def read_scores(out_dir: str, split: dict) -> np.ndarray:
    """The runner's ``scores.npy``, checked against ``split`` (``[test users, items + 1]``)."""
    scores = np.load(os.path.join(out_dir, "scores.npy"))
    shape = (len(split["test_users"]), len(split["item_tokens"]) + 1)
    if scores.shape != shape:
        raise RecBoleError(f"{out_dir}/scores.npy has shape {scores.shape}; the split needs "
                           f"{shape} (test users x catalogue items + 1)")
    return scores


def benchmark_row(name: str, scores, result: dict, *, positive, exclude, groups,
                  sampled_items, sampled_labels, sampled_groups, bootstrap: int,
                  seed: int) -> tuple:
    """The quality row of a RecBole run from its catalogue ``scores`` (``[users, items +
    1]``, users in the benchmark's order), scored by our metric code exactly as the other
    rows' catalogue logits are.

    Args:
        positive: each user's held-out item column.
        exclude: bool ``[users, items + 1]``: full ranking's exclusions (column 0 included).
        groups: the test impression id of each user (sorted, the benchmark's ``scored``).
        sampled_items / sampled_labels / sampled_groups: the sampled test candidates (one
            row per candidate: item column, label, impression id), as the other rows are
            scored on them.
        bootstrap, seed: the benchmark's bootstrap.

    Returns ``(row, per_user_sampled, per_user_full)``; the row holds the sampled metrics,
    ``full_ranking`` (our metrics on every catalogue item), ``recbole_reported`` (RecBole's
    own test and validation figures, beside ours without exclusions) and ``settings``.
    """
    from benchmarks import quality
    from trainer.evaluation import metrics

    scores = np.asarray(scores, dtype=np.float32)
    positive = np.asarray(positive, dtype=np.int64)
    users = np.arange(len(positive))
    if scores.shape[0] != len(positive) or not np.isfinite(scores[users, positive]).all():
        raise RecBoleError(f"{name}: the scores lack a finite score for some held-out item")
    at = np.searchsorted(groups, sampled_groups)
    matrix, matrix_groups = quality.user_matrix(
        scores[at, np.asarray(sampled_items, dtype=np.int64)], sampled_labels, sampled_groups)
    if not np.array_equal(matrix_groups, groups):
        raise RecBoleError(f"{name}: the sampled candidates are not the scored users'")
    per_user = metrics.sampled_ranking_metrics(matrix, positive_index=0, ks=quality.KS)
    per_user = {key: per_user[key] for key in quality.METRICS}
    full = metrics.full_ranking_metrics(scores, positive, exclude=exclude, ks=quality.FULL_KS)
    per_user_full = {key: full[key] for key in quality.FULL_METRICS}
    chosen = result["chosen"]
    row = {"model": name,
           **quality.summarize(per_user, users, bootstrap, seed),
           "candidates_per_user": int(matrix.shape[1]),
           "train_seconds": chosen["seconds"]["total"],
           "score_seconds": chosen.get("score_seconds")}
    row["full_ranking"] = {
        **quality.summarize(per_user_full, users, bootstrap, seed, quality.FULL_METRICS),
        "candidates_per_user": quality._spread(full["candidates"]),
        "score_seconds": chosen.get("score_seconds"), "pairwise": False,
        "users_subset": False,
        "users_without_scores": len(chosen.get("users_without_scores", [])),
        "scores": "RecBole's full_sort_predict of the chosen run (benchmarks/recbole_runner.py)"}
    only_padding = np.zeros_like(exclude, dtype=bool)
    only_padding[:, 0] = True
    unmasked = metrics.full_ranking_metrics(scores, positive, exclude=only_padding,
                                            ks=(10, 50))
    row["recbole_reported"] = {
        "protocol": "RecBole's own evaluator on its test rows: full sort, nothing masked but "
                    "the padding item (a sequential model), its own tie order; recall@k = "
                    "our hr@k with one held-out item",
        "test": chosen["test_result"], "validation": chosen["best_valid_result"],
        "test_rows": chosen.get("recbole_test_rows"),
        "ours_unmasked": {key: float(unmasked[key].mean()) for key in
                          ("hr@10", "ndcg@10", "hr@50", "ndcg@50")}}
    row["settings"] = {
        "kind": "recbole", "recbole_model": result["model"], "recbole": result["recbole"],
        "torch": result["torch"], "threads": result["threads"],
        "learning_rate": result["chosen_learning_rate"],
        "learning_rates": result["learning_rates"],
        "early_stopping_metric": "RecBole valid_metric NDCG@10 (full sort of the "
                                 "validation rows)",
        "best_valid_ndcg@10": chosen["best_valid_ndcg@10"],
        "epochs": result["settings"].get("epochs"), "epochs_run": chosen["epochs_run"],
        "best_epoch": chosen["best_epoch"], "parameters": chosen.get("parameters"),
        "seconds": chosen["seconds"], "search_seconds": result["seconds_total"],
        "search": [{key: run[key] for key in ("learning_rate", "best_valid_ndcg@10",
                                               "best_epoch", "epochs_run")}
                   | {"seconds": run["seconds"]["total"]} for run in result["runs"]],
        "recbole_settings": result["settings"]}
    seconds = chosen["seconds"]
    if chosen.get("validation_curve"):
        wall, values = zip(*chosen["validation_curve"])
        train_epoch = seconds["per_epoch_train"]
        row["time_to_quality"] = quality.time_to_quality(
            wall, values, [train_epoch], chosen.get("train_rows", 0), seconds["total"],
            metric="RecBole valid NDCG@10")
    row["overrides"] = []
    return row, per_user, per_user_full
