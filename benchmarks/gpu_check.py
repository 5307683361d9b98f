"""Training throughput and MFU of BERTRecommender on an accelerator, against its measured
matmul peak, in mixed precision with XLA (run by ``benchmarks/device_check.sh``).

    python -m benchmarks.gpu_check --sizes small,minilm --batch_size 256 \\
        --precision mixed_bfloat16 [--out runs/device_check]

It needs only ``models/`` and Keras, so it runs on any Keras 3 backend: TensorFlow where the
project's stack is installed, or JAX on a GPU machine that has JAX but no TensorFlow
(``KERAS_BACKEND=jax``). It times the model's compiled training step (``fit`` with
``jit_compile=True``: forward, backward, AdamW) on pre-generated token batches of sequence
length 128, so it measures the model and optimizer, not the tf.data pipeline (the CPU
benchmark ``benchmarks/throughput.py`` measures that). MFU = examples/s x training FLOPs per
example (``throughput.training_flops_per_example``: 3 x the forward matmul FLOPs) / the
median rate of 8192^3 matmuls in the same compute dtype, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks.throughput import (SEQUENCE_LENGTH, SIZES, VOCABULARY_SIZE,
                                   training_flops_per_example)


def _sync(x):
    """Blocks until ``x`` is computed (JAX and TF dispatch asynchronously on GPUs)."""
    import keras

    return float(keras.ops.convert_to_numpy(keras.ops.sum(keras.ops.cast(x, "float32"))))


def measure_matmul_peak(dtype: str, n: int = 8192, calls: int = 10, repeats: int = 5) -> float:
    """Median TFLOP/s of ``calls`` chained ``n x n`` matmuls in ``dtype``, compiled."""
    import keras

    backend = keras.backend.backend()
    a = keras.random.normal([n, n], dtype=dtype)
    b = keras.ops.cast(keras.random.normal([n, n]) / n ** 0.5, dtype)

    def chain(x, y):
        for _ in range(calls):
            x = keras.ops.matmul(x, y)
        return x

    if backend == "jax":
        import jax
        chain = jax.jit(chain)
    elif backend == "tensorflow":
        import tensorflow as tf
        chain = tf.function(chain, jit_compile=True)
    _sync(chain(a, b))
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        _sync(chain(a, b))
        rates.append(2 * n ** 3 * calls / (time.perf_counter() - started) / 1e12)
    return statistics.median(rates)


def measure_training(size_name: str, batch_size: int, steps: int, windows: int) -> float:
    """Median examples/s of ``windows`` fits of ``steps`` steps each, after a warm-up fit."""
    import keras
    import numpy as np

    from models.bert_recommender import BERTRecommender

    keras.utils.set_random_seed(0)
    model = BERTRecommender.from_sizes(vocabulary_size=VOCABULARY_SIZE,
                                       max_sequence_length=SEQUENCE_LENGTH, dropout=0.1,
                                       head_dropout=0.1, pooling="cls", **SIZES[size_name])
    model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01, clipnorm=1.0),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=True)
    rng = np.random.default_rng(0)
    rows = batch_size * steps
    token_ids = rng.integers(5, VOCABULARY_SIZE, size=(rows, SEQUENCE_LENGTH), dtype=np.int32)
    token_ids[:, 0] = 2
    segment_ids = np.zeros_like(token_ids)
    segment_ids[:, SEQUENCE_LENGTH // 2:] = 1
    features = {"token_ids": token_ids, "segment_ids": segment_ids}
    labels = rng.integers(0, 2, size=rows).astype(np.float32)

    def fit(n_steps):
        model.fit({k: v[: n_steps * batch_size] for k, v in features.items()},
                  labels[: n_steps * batch_size], batch_size=batch_size, epochs=1,
                  shuffle=False, verbose=0)

    fit(min(steps, 3))  # compile
    rates = []
    for _ in range(windows):
        started = time.perf_counter()
        fit(steps)
        rates.append(rows / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,minilm")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--precision", default="mixed_bfloat16",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--matmul_n", type=int, default=8192)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    import keras

    keras.mixed_precision.set_global_policy(args.precision)
    compute_dtype = keras.mixed_precision.global_policy().compute_dtype
    devices = []
    if keras.backend.backend() == "jax":
        import jax
        devices = [str(d) for d in jax.devices()]
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf
        devices = [d.name for d in tf.config.list_logical_devices()]
    peak = measure_matmul_peak(compute_dtype, n=args.matmul_n)
    result = {"backend": keras.backend.backend(), "devices": devices,
              "precision": args.precision, "batch_size": args.batch_size,
              "sequence_length": SEQUENCE_LENGTH, "matmul_peak_tflops": peak, "rows": []}
    print(f"{keras.backend.backend()} on {devices}; {compute_dtype} matmul peak "
          f"{peak:.1f} TFLOP/s", flush=True)
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        rate = measure_training(size, args.batch_size, args.steps, args.windows)
        flops = training_flops_per_example(SIZES[size])
        row = {"size": size, "train_examples_per_s": rate,
               "achieved_tflops": rate * flops / 1e12, "mfu": rate * flops / (peak * 1e12)}
        result["rows"].append(row)
        print(f"{size:<8} {rate:>10.0f} ex/s  {row['achieved_tflops']:>7.1f} TFLOP/s  "
              f"MFU {row['mfu']:.1%}", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "device_check.json"), "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
