"""Latency of the exported ``retrieve`` signature, timed in a fresh process.

    python -m benchmarks.retrieve_latency --out /tmp/retrieve      # trains a 10k-item run
    python -m benchmarks.retrieve_latency --model_dir RUN --out /tmp/retrieve

Without ``--model_dir`` it first trains the demo's two-tower model (configs/demo.yaml)
for one short epoch on a synthetic catalogue of ``--num_items`` (10,000) items: latency
depends on the architecture and the index size, not on how well the model learned. Then a
new Python process (``--probe``) loads ``RUN/export`` (tensorflow + tensorflow_text
imports and the SavedModel load are timed apart) and calls ``retrieve`` on real users of
the run's test split: batch-1 latency p50/p99 for each ``--k`` (all in the same process,
so k changing per call is exercised), and batch-64 users/s. Writes
``OUT/retrieve_latency.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

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


def _requests(model_dir: str, users: int = 64) -> dict:
    """``retrieve`` inputs for the first ``users`` test users of the run (their query and
    most recent history items, as training saw them)."""
    from trainer import runs
    from trainer.training.train_lib import prepare_data

    cfg = runs.read_config(model_dir)
    prepared = prepare_data(cfg, model_dir)
    featurizer = runs.open_run(model_dir).featurizer
    table = prepared.tables["test"]
    rows = list(range(min(users, len(table))))
    history = table.history_index[rows]
    query = table.query if table.query is not None else [""] * len(table)
    return {"query": [str(query[r]) for r in rows],
            "history_text": [[featurizer.item_texts[i] for i in h] for h in history],
            "history_ids": [[featurizer.item_ids[i] for i in h] for h in history]}


def _probe(export_dir: str, inputs_path: str, ks: list, calls: int) -> dict:
    """Runs in the fresh process: load, then time ``retrieve``."""
    started = time.perf_counter()
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops of the graph)

    import_seconds = time.perf_counter() - started
    loaded = tf.saved_model.load(export_dir)
    load_seconds = time.perf_counter() - started - import_seconds
    retrieve = loaded.signatures["retrieve"]
    with open(inputs_path) as f:
        requests = json.load(f)
    tensors = {name: tf.constant(value) for name, value in requests.items()}
    from benchmarks.timing import call_times, latency_summary

    result = {"import_seconds": import_seconds, "load_seconds": load_seconds, "k": {}}
    user = 0

    def call(n, k):
        n = min(n, len(requests["query"]))

        def run():
            nonlocal user
            rows = slice(user % (len(requests["query"]) - n + 1), None)
            user += 1
            batch = {name: value[rows][:n] for name, value in tensors.items()}
            return retrieve(k=tf.constant(k, tf.int32), **batch)["item_ids"].numpy()
        return run

    for k in ks:
        summary = latency_summary(call_times(call(64, k), max(5, calls // 10)),
                                  call_times(call(1, k), calls))
        result["k"][str(k)] = {"batch1_p50_ms": summary["batch1_p50_ms"],
                               "batch1_p99_ms": summary["batch1_p99_ms"],
                               "batch64_users_per_s": summary["batch64_examples_per_s"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.retrieve_latency")
    parser.add_argument("--out", required=True)
    parser.add_argument("--model_dir", default="",
                        help="a finished two-tower run; default: train one")
    parser.add_argument("--num_items", type=int, default=10000)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.probe:
        print(json.dumps(_probe(os.path.join(args.model_dir, "export"), args.inputs, args.k,
                                args.calls)))
        return 0
    os.makedirs(args.out, exist_ok=True)
    model_dir = args.model_dir or _train(args.out, args.num_items)
    inputs = os.path.join(args.out, "retrieve_requests.json")
    with open(inputs, "w") as f:
        json.dump(_requests(model_dir), f)
    from trainer.kinds.item_index import ItemIndex

    index_items = len(ItemIndex.load(model_dir))
    probe = subprocess.run(
        [sys.executable, "-m", "benchmarks.retrieve_latency", "--probe", "--out", args.out,
         "--model_dir", model_dir, "--inputs", inputs, "--calls", str(args.calls),
         "--k", *map(str, args.k)], cwd=REPO, check=True, capture_output=True, text=True)
    result = {"model_dir": model_dir, "index_items": index_items,
              "fresh_process": json.loads(probe.stdout.strip().splitlines()[-1])}
    with open(os.path.join(args.out, "retrieve_latency.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
