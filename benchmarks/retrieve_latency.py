"""Latency of catalogue retrieval: the exported ``retrieve`` signature in a fresh process, a
numpy lower bound timed in the same process, and the approximate (HNSW) index.

    python -m benchmarks.retrieve_latency --out /tmp/retrieve                    # 10k items
    python -m benchmarks.retrieve_latency --num_items 1000000 --out /tmp/r1m     # 1M items
    python -m benchmarks.retrieve_latency --model_dir RUN --out /tmp/retrieve

Without ``--model_dir`` it first trains the demo's two-tower model (configs/demo.yaml) for
one short epoch on a synthetic catalogue of ``--train_items`` (10,000) items: latency
depends on the architecture and the index size, not on how well the model learned.

``--num_items`` larger than the run's catalogue grows its item index with synthetic items
(:func:`synthetic_index`): vectors drawn from a Gaussian with the mean and covariance of the
run's own item vectors, and id features (so item biases) drawn from the run's items, then
exports the model with that index baked in. Users are real users of the run's test split.

Then a new Python process (``--probe``) loads the SavedModel (imports and load timed apart)
and, for each ``--k`` and each ``--batches`` size, times ``retrieve`` (p50/p99 of
``--calls`` calls at batch 1, a tenth of them above) and, in the same process, the numpy
bound of the same ranking: the users' logits against every item
(``retrieval.catalogue_scores``, the user tower already run) and ``np.argpartition`` for
the top k, sorted. ``retrieve`` also runs the user tower and drops seen items; the bound is
not below it on every CPU (TensorFlow's product and ``top_k`` use every core, where
``np.argpartition`` uses one).

``--ann_sizes`` (needs faiss-cpu and numba, the ``ann`` extra) builds
``retrieval.ApproximateIndex`` over the first n items of the index for each n, and reports
its build time and, for each ``--ann_search`` (``joint``: one graph walk per user under its
own logit; ``per_query``: faiss' search per query, the union rescored) and each
``--ann_ef`` search beam (``--ann_neighbours`` = HNSW's M, ``--ann_ef_construction`` its
build beam, ``--ann_storage`` the vectors' storage in the graph), recall@k against the
exact top k of the same users (seen items excluded on both sides) and batch-1 latency
p50/p99 (search and exact rescoring; the user tower not included).

Writes ``OUT/retrieve_latency.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from trainer.serving import retrieval  # light: numpy only, no TensorFlow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(out: str, num_items: int) -> str:
    from trainer import config as config_lib
    from trainer.training import train_lib

    cfg = config_lib.load_config(os.path.join(REPO, "configs", "demo.yaml"), [
        f"data.synthetic.num_items={num_items}", "data.synthetic.num_users=300",
        "train.epochs=1"])
    model_dir = os.path.join(out, "run")
    train_lib.train(cfg, model_dir)
    return model_dir


def synthetic_index(index, num_items: int, seed: int = 0):
    """``index`` grown to ``num_items`` items: the real items first, then synthetic ones
    (ids ``synthetic-<n>``) whose vectors are drawn from a Gaussian with the real vectors'
    mean and covariance and whose id features (item biases) are those of real items drawn
    at random. Structure like the model's own, without copying any item."""
    from trainer.kinds.item_index import ItemIndex

    rng = np.random.default_rng(seed)
    extra = num_items - len(index)
    real = index.vectors.astype(np.float64)
    vectors = rng.multivariate_normal(real.mean(axis=0), np.cov(real, rowvar=False),
                                      size=extra, method="cholesky")
    return ItemIndex(list(index.item_ids) + [f"synthetic-{n}" for n in range(extra)],
                     np.concatenate([index.vectors, vectors.astype(np.float32)]),
                     np.concatenate([index.id_index, rng.choice(index.id_index, extra)]))


def _requests(model_dir: str, users: int) -> dict:
    """``retrieve`` inputs for ``users`` test users of the run (their query and most recent
    history items, as training saw them; the split's users repeat when it has fewer)."""
    from trainer import runs
    from trainer.training.train_lib import prepare_data

    cfg = runs.read_config(model_dir)
    prepared = prepare_data(cfg, model_dir)
    featurizer = runs.open_run(model_dir).featurizer
    table = prepared.tables["test"]
    rows = [r % len(table) for r in range(users)]
    history = table.history_index[rows]
    query = table.query if table.query is not None else [""] * len(table)
    return {"query": [str(query[r]) for r in rows],
            "history_text": [[featurizer.item_texts[i] for i in h] for h in history],
            "history_ids": [[featurizer.item_ids[i] for i in h] for h in history]}


def numpy_bound(queries, present, vectors, k: int, offset: float) -> np.ndarray:
    """The top ``k`` positions of each user, best first: every user's logit against every
    item (``retrieval.catalogue_scores``), then ``argpartition`` and a sort of the k."""
    scores = retrieval.catalogue_scores(queries, present, vectors, offset)
    top = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def _probe(export_dir: str, inputs_dir: str, ks: list, batches: list, calls: int) -> dict:
    """Runs in the fresh process: load, then time ``retrieve`` and the numpy bound."""
    started = time.perf_counter()
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops of the graph)

    import_seconds = time.perf_counter() - started
    loaded = tf.saved_model.load(export_dir)
    load_seconds = time.perf_counter() - started - import_seconds
    retrieve = loaded.signatures["retrieve"]
    with open(os.path.join(inputs_dir, "requests.json")) as f:
        requests = json.load(f)
    arrays = np.load(os.path.join(inputs_dir, "queries.npz"))
    vectors = np.load(os.path.join(inputs_dir, "retrieval_vectors.npy"))
    offset = float(arrays["offset"])
    tensors = {name: tf.constant(value) for name, value in requests.items()}
    users = len(requests["query"])
    from benchmarks.timing import call_times, quantile

    def rows_of(n):  # successive calls read successive users
        start = 0

        def rows():
            nonlocal start
            first = start % (users - n + 1)
            start += 1
            return slice(first, first + n)
        return rows

    def timed(run_rows, n):
        rows = rows_of(n)
        times = call_times(lambda: run_rows(rows()), calls if n == 1 else max(3, calls // 10))
        return {"p50_ms": 1000 * quantile(times, 0.5), "p99_ms": 1000 * quantile(times, 0.99),
                "users_per_s": n / quantile(times, 0.5)}

    result = {"import_seconds": import_seconds, "load_seconds": load_seconds, "k": {}}
    for k in ks:
        per_k = result["k"][str(k)] = {}
        for n in (b for b in batches if b <= users):
            served = timed(lambda rows: retrieve(
                k=tf.constant(k, tf.int32), **{name: value[rows] for name, value in
                                                tensors.items()})["item_ids"].numpy(), n)
            bound = timed(lambda rows: numpy_bound(arrays["queries"][rows],
                                                   arrays["present"][rows], vectors, k,
                                                   offset), n)
            per_k[f"batch{n}"] = {"retrieve": served, "numpy_bound": bound,
                                  "p50_ratio": served["p50_ms"] / bound["p50_ms"]}
    return result


BLOCK = 25  # approximate index: calls of one setting timed in a row (approximate_figures)


def approximate_figures(queries, present, vectors, seen, offset, sizes: list, k: int,
                        calls: int, ef_search: list, neighbours: int = 32,
                        storage: str = "flat", searches: list = ("joint",),
                        ef_construction: int = 200, log=print) -> dict:
    """For each n of ``sizes``: ``retrieval.ApproximateIndex`` over the first n items, its
    build time and, for each of ``searches`` and each ``ef_search``, recall@k against
    exact retrieval (seen items excluded on both sides) and batch-1 latency of search +
    exact rescoring (``calls`` calls each, the settings in turns of ``BLOCK``), under
    ``[search][ef]``."""
    from benchmarks.timing import quantile

    figures = {}
    for size in sizes:
        items = vectors[:size]
        exclude = [[p for p in s if p < size] for s in seen]
        exact, _ = retrieval.top_k(retrieval.catalogue_scores(queries, present, items, offset),
                                   k, exclude)
        started = time.perf_counter()
        index = retrieval.ApproximateIndex(items, neighbours=neighbours, storage=storage,
                                           ef_construction=ef_construction)
        figures[str(size)] = per_size = {
            "build_seconds": time.perf_counter() - started, "k": k, "storage": storage,
            "neighbours": index.neighbours, "ef_construction": index.ef_construction,
            "candidates": index.candidates}
        settings = [(search, ef) for search in searches for ef in ef_search]
        for search, ef in settings:
            index.search_mode, index.ef_search = search, ef
            found, _ = index.search(queries, present, k, offset, exclude)
            recall = [len(set(a) & set(b)) / k for a, b in zip(found, exact)]
            per_size.setdefault(search, {})[str(ef)] = {
                "recall_at_k": float(np.mean(recall)),
                "min_user_recall_at_k": float(np.min(recall))}
        # Timed in turns of BLOCK calls: each setting runs BLOCK calls in a row (as a server
        # running that one setting would, its caches warm; an untimed call first), then the
        # next, round after round, so a change in the machine's speed during the run (2-core
        # cloud machines drift by tens of percent over minutes) falls on all settings alike.
        # Calls one after the other alternating settings were slower for the joint search
        # (5.1-5.6 ms against 3.8-4.5 alone at a million items): the other walk evicted
        # its graph from the caches.
        times = {setting: [] for setting in settings}
        for start in range(0, calls, BLOCK):
            for setting in settings:
                index.search_mode, index.ef_search = setting
                for call in range(start - 1, min(calls, start + BLOCK)):
                    u = max(call, 0) % len(queries)
                    started = time.perf_counter()
                    index.search(queries[u:u + 1], present[u:u + 1], k, offset,
                                 exclude[u:u + 1])
                    if call >= start:
                        times[setting].append(time.perf_counter() - started)
        for (search, ef), seconds in times.items():
            figure = per_size[search][str(ef)]
            figure.update({"batch1_p50_ms": 1000 * quantile(seconds, 0.5),
                           "batch1_p99_ms": 1000 * quantile(seconds, 0.99)})
            log(f"approximate index over {size} items, {search} search, efSearch {ef}: "
                f"{json.dumps(figure)}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieve_latency")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model_dir", default="",
                        help="a finished two-tower run; default: train one")
    parser.add_argument("--train_items", type=int, default=10000,
                        help="the catalogue of the run trained without --model_dir")
    parser.add_argument("--num_items", type=int, default=0,
                        help="items in the timed index (default: the run's catalogue); "
                        "more than the run has are synthetic")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256],
                        help="users per retrieve call")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--users", type=int, default=256,
                        help="test users whose requests are timed and whose recall is averaged")
    parser.add_argument("--ann_sizes", type=int, nargs="*", default=[],
                        help="index sizes for the approximate index (faiss-cpu)")
    parser.add_argument("--ann_k", type=int, default=100)
    parser.add_argument("--ann_ef", type=int, nargs="+", default=[256, 512, 1024],
                        help="HNSW search beams measured (one build per size)")
    parser.add_argument("--ann_neighbours", type=int, default=32, help="HNSW's M")
    parser.add_argument("--ann_ef_construction", type=int, default=200,
                        help="HNSW's build-time beam")
    parser.add_argument("--ann_storage", default="flat",
                        choices=retrieval.ApproximateIndex.STORAGE,
                        help="how the HNSW graph stores the vectors it walks "
                             "(retrieval.ApproximateIndex)")
    parser.add_argument("--ann_search", nargs="+", default=["joint"],
                        choices=retrieval.ApproximateIndex.SEARCHES,
                        help="searches measured (retrieval.ApproximateIndex's search)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--export_dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.probe:
        print(json.dumps(_probe(args.export_dir, args.out, args.k, args.batches, args.calls)))
        return 0
    os.makedirs(args.out, exist_ok=True)
    model_dir = args.model_dir or _train(args.out, args.train_items)
    from trainer.serving import export, recommend_lib

    recommender = recommend_lib.Recommender(model_dir)
    run, index = recommender.run, recommender.index
    export_dir = os.path.join(model_dir, "export")
    if args.num_items and args.num_items < len(index):
        parser.error(f"--num_items {args.num_items} is below the run's {len(index)} items")
    if args.num_items > len(index):
        index = synthetic_index(index, args.num_items)
        export_dir = os.path.join(args.out, "export")
        started = time.perf_counter()
        export.export_saved_model(run.model, export_dir, run.kind, run.featurizer, index)
        print(f"exported {len(index)} items in {time.perf_counter() - started:.1f} s")
    if any(size > len(index) for size in args.ann_sizes):
        parser.error(f"--ann_sizes may not exceed the index's {len(index)} items")
    # The same users for every measure: at least --users, whatever the batch sizes.
    requests = _requests(model_dir, max(args.users, *args.batches))
    queries, present, seen = recommender.user_queries(
        requests["query"], [[i for i in h if i] for h in requests["history_ids"]])
    vectors = np.asarray(run.model.retrieval_vectors(index.vectors, index.id_index), np.float32)
    offset = float(run.model.global_bias)
    with open(os.path.join(args.out, "requests.json"), "w") as f:
        json.dump(requests, f)
    np.savez(os.path.join(args.out, "queries.npz"), queries=queries, present=present,
             offset=offset)
    np.save(os.path.join(args.out, "retrieval_vectors.npy"), vectors)
    probe = subprocess.run(
        [sys.executable, "-m", "benchmarks.retrieve_latency", "--probe", "--out", args.out,
         "--export_dir", export_dir, "--calls", str(args.calls), "--k", *map(str, args.k),
         "--batches", *map(str, args.batches)],
        cwd=REPO, check=True, capture_output=True, text=True)
    result = {"model_dir": model_dir, "export_dir": export_dir, "index_items": len(index),
              "synthetic_items": len(index) - len(recommender.index),
              "dimension": int(vectors.shape[1]), "users": len(queries),
              "mean_queries_per_user": float(present.sum(axis=1).mean()),
              "fresh_process": json.loads(probe.stdout.strip().splitlines()[-1])}
    if args.ann_sizes:
        result["approximate"] = approximate_figures(queries, present, vectors, seen, offset,
                                                    args.ann_sizes, args.ann_k, args.calls,
                                                    args.ann_ef, args.ann_neighbours,
                                                    args.ann_storage, args.ann_search,
                                                    args.ann_ef_construction)
    os.remove(os.path.join(args.out, "retrieval_vectors.npy"))  # 260 MB at 1M items
    with open(os.path.join(args.out, "retrieve_latency.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
