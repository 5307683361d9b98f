"""Times an exported SavedModel in a fresh process (run by benchmarks/throughput.py).

    python -m benchmarks.serving_probe --export_dir DIR --inputs pairs.json

``pairs.json`` holds ``{"user_text": [...64], "item_text": [...64], "token_ids": [[...]],
"segment_ids": [[...]]}`` (the ids: the same pairs packed by the run's packer). Prints one
JSON line: for ``raw_strings`` (``serving_default``) and ``token_ids`` (``serve_tokens``):
batch-64 examples/s (median of ``--batch_calls``) and
batch-1 latency p50/p99 (over ``--latency_calls``), plus the load time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks.timing import call_times, latency_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_probe")
    parser.add_argument("--export_dir", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--batch_calls", type=int, default=20)
    parser.add_argument("--latency_calls", type=int, default=100)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops of serving_default)

    loaded = tf.saved_model.load(args.export_dir)
    load_seconds = time.perf_counter() - started
    with open(args.inputs) as f:
        pairs = json.load(f)
    users, items = tf.constant(pairs["user_text"]), tf.constant(pairs["item_text"])
    serve_text = loaded.signatures["serving_default"]
    serve_tokens = loaded.signatures["serve_tokens"]
    ids = {k: tf.constant(pairs[k], tf.int32) for k in ("token_ids", "segment_ids")}

    def text(n):
        return lambda: serve_text(user_text=users[:n], item_text=items[:n])[
            "click_probability"].numpy()

    def tokens(n):
        return lambda: serve_tokens(token_ids=ids["token_ids"][:n],
                                    segment_ids=ids["segment_ids"][:n])[
            "click_probability"].numpy()

    result = {"load_seconds": load_seconds,
              "raw_strings": latency_summary(call_times(text(64), args.batch_calls),
                                             call_times(text(1), args.latency_calls)),
              "token_ids": latency_summary(call_times(tokens(64), args.batch_calls),
                                           call_times(tokens(1), args.latency_calls))}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
