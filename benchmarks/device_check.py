"""The GPU check on the project's own code: its model classes, compiled by its own training
step (trainer/training/optimization.py) and trained by Keras' fit under JAX, on the demo data.

The lent GPU machine has JAX but no TensorFlow and no network, and a call carries at most
64 MiB, so the work is split in two:

    # here (TensorFlow + tf-text): tokenize the demo data and build the models
    python -m benchmarks.device_check prepare --out device_check_data \\
        --minilm ../shared/models/all-MiniLM-L6-v2
    # there (JAX only): train, time and evaluate; bash benchmarks/device_check.sh runs it
    KERAS_BACKEND=jax python -m benchmarks.device_check run --data device_check_data --out OUT

``prepare`` writes, per model, the run's config, the model built by ``train_lib.build_model``
in ``mixed_bfloat16`` and the data as arrays: the two-tower demo (configs/demo.yaml) as
its table columns (item and history indices, query token ids) plus the catalogue's token
table, which ``run`` gathers exactly as ``trainer.kinds.two_tower.TwoTowerFeatures.features`` does in tf.data; the
MiniLM cross-encoder (configs/demo_cross.yaml with all-MiniLM-L6-v2, sequence length 64,
600 steps of batch 32 at lr 5e-5) as packed token ids, its weights in float16 to fit the
64 MiB. ``run`` feeds them through a ``keras.utils.PyDataset`` (no tf.data), compiles with
``optimization.compile_for_training``, fits for the config's schedule, and reports training
examples/s (steady state: the timed steps after the first ``--warmup_steps``), the MFU
(XLA's FLOP count of the compiled forward pass x 3, over the bf16 matmul peak measured in
the same process, and over the chip's spec when ``--spec_tflops`` is given) and the
validation/test metrics of trainer/evaluation/metrics.py. Run ``run`` here too (CPU, JAX) for the
throughput it is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("two_tower", "minilm")
MINILM_OVERRIDES = ["model.normalize_first=false", "model.pooling=first", "model.dropout=0.1", "data.sequence_length=64",
                    "model.max_sequence_length=64", "train.learning_rate=5e-5",
                    "train.batch_size=32", "train.epochs=1", "train.steps_per_epoch=600",
                    "train.warmup_fraction=0.1"]
EVAL_ROWS = 4000  # rows of validation and test carried for the MiniLM model (whole impressions)


# ---------------------------------------------------------------------------------------
# prepare (TensorFlow side)
# ---------------------------------------------------------------------------------------

def _head_impressions(table, rows: int):
    """The first whole impressions of ``table`` holding at most ``rows`` rows."""
    if len(table) <= rows:
        return table
    cut = int(np.searchsorted(table.group, table.group[rows], side="left"))
    return table.subset(np.arange(cut))


def _eval_arrays(prefix: str, table) -> dict:
    arrays = {f"{prefix}_label": table.label.astype(np.int8),
              f"{prefix}_group": table.group.astype(np.int32)}
    if table.true_probability is not None:
        arrays[f"{prefix}_true_probability"] = table.true_probability
    return arrays


def prepare(out: str, minilm: str, work_dir: str, two_tower_config: str = "",
            two_tower_overrides=()) -> dict:
    """Writes ``out/<model>/{config.yaml, model.json, weights.npz, arrays.npz}`` (see the
    module doc); ``two_tower_config`` (default configs/demo.yaml) and its overrides let
    tests prepare a micro run."""
    import keras
    import tensorflow as tf

    from trainer import config as config_lib
    from trainer.training import distribute, train_lib

    written = {}
    for name in MODELS:
        if name == "minilm" and not minilm:
            continue
        config = (two_tower_config or os.path.join(REPO, "configs", "demo.yaml")
                  if name == "two_tower" else os.path.join(REPO, "configs", "demo_cross.yaml"))
        overrides = ["runtime.precision=mixed_bfloat16"]
        if name == "two_tower":
            overrides += list(two_tower_overrides)
        if name == "minilm":
            overrides += MINILM_OVERRIDES + [f"model.pretrained={os.path.abspath(minilm)}"]
        cfg = config_lib.load_config(config, overrides)
        distribute.set_precision(cfg.runtime)
        keras.utils.set_random_seed(cfg.train.seed)
        prepared = train_lib.prepare_data(cfg, os.path.join(work_dir, name))
        packer = train_lib.make_packer(cfg, prepared.vocabulary, prepared)
        model = train_lib.build_model(cfg, packer, prepared.ids, prepared.tables["train"])
        model(train_lib.dummy_batch(cfg, packer))
        target = os.path.join(out, name)
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, "config.yaml"), "w") as f:
            f.write(config_lib.dump_yaml(cfg))
        # The serialized model and its weights (float16 for MiniLM: the 64 MiB budget); run
        # restores them into the same class.
        with open(os.path.join(target, "model.json"), "w") as f:
            json.dump(keras.saving.serialize_keras_object(model), f)
        np.savez(os.path.join(target, "weights.npz"),
                 *[np.asarray(w.numpy(), np.float16 if name == "minilm" else None)
                   for w in model.weights])
        arrays = {}
        if name == "two_tower":
            arrays["token_table"] = packer.item_tokens
            arrays["trained_mask"] = packer.trained_mask
            for split in ("train", "validation", "test"):
                table = prepared.tables[split]
                query = packer.tokenizer(tf.constant(table.query.astype(str)))
                arrays[f"{split}_item_index"] = table.item_index.astype(np.int32)
                arrays[f"{split}_history_index"] = table.history_index.astype(np.int32)
                arrays[f"{split}_query_token_ids"] = np.asarray(query, np.int32)
                if split == "train":
                    arrays["train_label"] = table.label.astype(np.int8)
                else:
                    arrays.update(_eval_arrays(split, table))
        else:
            steps = cfg.train.steps_per_epoch * cfg.train.epochs
            rows = steps * cfg.train.batch_size
            train = prepared.tables["train"]
            order = np.random.default_rng(cfg.train.seed).permutation(len(train))[:rows]
            for split, table in (("train", train.subset(np.sort(order))),
                                 ("validation", _head_impressions(
                                     prepared.tables["validation"], EVAL_ROWS)),
                                 ("test", _head_impressions(prepared.tables["test"],
                                                            EVAL_ROWS))):
                packed = [packer(tf.constant(table.user_text[i:i + 512].astype(str)),
                                 tf.constant(table.item_text[i:i + 512].astype(str)))
                          for i in range(0, len(table), 512)]
                for key in ("token_ids", "segment_ids"):
                    arrays[f"{split}_{key}"] = np.concatenate(
                        [np.asarray(p[key]) for p in packed]).astype(np.int16)
                if split == "train":
                    arrays["train_label"] = table.label.astype(np.int8)
                else:
                    arrays.update(_eval_arrays(split, table))
        np.savez_compressed(os.path.join(target, "arrays.npz"), **arrays)
        written[name] = sorted(os.listdir(target))
        keras.mixed_precision.set_global_policy("float32")
    return written


# ---------------------------------------------------------------------------------------
# run (JAX side: no TensorFlow)
# ---------------------------------------------------------------------------------------

def _features(name: str, arrays, split: str, rows) -> dict:
    """Model inputs of ``rows`` of ``split``, as the tf.data pipeline would give them."""
    if name == "minilm":
        return {k: arrays[f"{split}_{k}"][rows].astype(np.int32)
                for k in ("token_ids", "segment_ids")}
    table, trained = arrays["token_table"], arrays["trained_mask"]
    item = arrays[f"{split}_item_index"][rows]
    history = arrays[f"{split}_history_index"][rows]
    return {"item_index": np.where(trained[item], item, 0).astype(np.int32),
            "history_index": np.where(trained[history], history, 0).astype(np.int32),
            "item_token_ids": table[item], "history_token_ids": table[history],
            "query_token_ids": arrays[f"{split}_query_token_ids"][rows]}


def _batches(name, arrays, split, batch_size, seed=None, labels=True):
    """A keras.utils.PyDataset over ``split``: shuffled each epoch when ``seed`` is given
    (training, full batches only), in order otherwise."""
    import keras

    count = len(arrays[f"{split}_label"])

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = self._order()

        def _order(self):
            if seed is None:
                return np.arange(count)
            return np.random.default_rng([seed, self.epoch]).permutation(count)

        def __len__(self):
            return count // batch_size if seed is not None else -(-count // batch_size)

        def __getitem__(self, index):
            rows = self.order[index * batch_size:(index + 1) * batch_size]
            x = _features(name, arrays, split, rows)
            return (x, arrays[f"{split}_label"][rows].astype(np.float32)) if labels else (x,)

        def on_epoch_end(self):
            self.epoch += 1
            self.order = self._order()

    return Batches()


def measure_matmul_peak(dtype: str, n: int = 8192, calls: int = 10, repeats: int = 5) -> float:
    """Median TFLOP/s of ``calls`` chained ``n x n`` matmuls in ``dtype``, jit-compiled."""
    import jax
    import keras

    a = keras.random.normal([n, n], dtype=dtype)
    b = keras.ops.cast(keras.random.normal([n, n]) / n ** 0.5, dtype)

    @jax.jit
    def chain(x, y):
        for _ in range(calls):
            x = keras.ops.matmul(x, y)
        return x

    chain(a, b).block_until_ready()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        chain(a, b).block_until_ready()
        rates.append(2 * n ** 3 * calls / (time.perf_counter() - started) / 1e12)
    return statistics.median(rates)


def _load_model(directory: str, precision: str):
    """The prepared model's class from its config, every layer in ``precision``; the
    weights are set once it is built (:func:`run_one`)."""
    import keras

    import bert_recommender.models.bert_recommender  # noqa: F401  (registers the classes)
    import bert_recommender.models.two_tower  # noqa: F401
    with open(os.path.join(directory, "model.json")) as f:
        text = f.read()
    for policy in ("mixed_bfloat16", "mixed_float16", "float32"):
        text = text.replace(f'"config": {{"name": "{policy}"}}',
                            f'"config": {{"name": "{precision}"}}')
    return keras.saving.deserialize_keras_object(json.loads(text))


def run_one(name: str, directory: str, warmup_steps: int, max_steps: int = 0,
            precision: str = "") -> dict:
    """Trains, times and evaluates one prepared model; returns its report row."""
    import keras
    import yaml

    from trainer import backend, config as config_lib
    from trainer.evaluation import metrics
    from trainer.training import optimization

    with open(os.path.join(directory, "config.yaml")) as f:
        cfg = config_lib.config_from_dict(yaml.safe_load(f))
    precision = precision or cfg.runtime.precision
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(cfg.train.seed)
    arrays = dict(np.load(os.path.join(directory, "arrays.npz")))
    model = _load_model(directory, precision)
    train = _batches(name, arrays, "train", cfg.train.batch_size, seed=cfg.train.seed)
    model(_features(name, arrays, "train", np.arange(2)))  # build
    weights = np.load(os.path.join(directory, "weights.npz"))
    model.set_weights([weights[f"arr_{i}"].astype(np.float32)
                       for i in range(len(model.weights))])
    steps_per_epoch = cfg.train.steps_per_epoch or len(train)
    epochs = cfg.train.epochs
    if max_steps:  # a short run (CPU comparison, tests)
        epochs, steps_per_epoch = 1, min(max_steps, steps_per_epoch)
    optimization.compile_for_training(model, cfg, steps_per_epoch * epochs)

    class StepTimer(keras.callbacks.Callback):
        """Wall time of the train steps after the first ``warmup_steps`` (compilation)."""

        def __init__(self):
            super().__init__()
            self.step, self.started, self.timed = 0, None, 0

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step == warmup_steps:
                self.started = time.perf_counter()
            elif self.step > warmup_steps:
                self.timed += 1

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.started if self.started else None

    timer = StepTimer()
    started = time.perf_counter()
    model.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[timer],
              verbose=2)
    fit_seconds = time.perf_counter() - started
    examples_per_s = (timer.timed * cfg.train.batch_size / timer.seconds
                      if timer.seconds else None)
    # FLOPs of one forward pass per example, counted by XLA; training = 3 x forward.
    sample = _features(name, arrays, "train", np.arange(cfg.train.batch_size))
    forward = backend.compiled_forward(model)
    cost = forward.jitted.lower([v.value for v in model.trainable_variables],
                                [v.value for v in model.non_trainable_variables],
                                sample).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    train_flops = 3 * float(cost.get("flops", 0.0)) / cfg.train.batch_size
    row = {"model": name, "batch_size": cfg.train.batch_size, "precision": precision,
           "steps": steps_per_epoch * epochs, "fit_seconds": round(fit_seconds, 1),
           "train_examples_per_s": examples_per_s,
           "train_flops_per_example": train_flops}
    for split in ("validation", "test"):
        data = _batches(name, arrays, split, cfg.train.eval_batch_size, labels=False)
        logits = np.asarray(model.predict(data, verbose=0), np.float32).reshape(-1)
        truth = arrays.get(f"{split}_true_probability")
        row[split] = metrics.evaluate_predictions(
            arrays[f"{split}_label"].astype(np.float32), logits,
            arrays[f"{split}_group"].astype(np.int64), true_probabilities=truth)
    keras.mixed_precision.set_global_policy("float32")
    return row


def run(data: str, out: str, warmup_steps: int, spec_tflops: float, max_steps: int = 0,
        matmul_n: int = 8192, precision: str = "") -> dict:
    import jax
    import keras

    if keras.backend.backend() != "jax":
        raise SystemExit("run under KERAS_BACKEND=jax (the GPU machine has no TensorFlow)")
    devices = [str(d) for d in jax.devices()]
    dtype = "float32" if precision == "float32" else "bfloat16"
    peak = measure_matmul_peak(dtype, n=matmul_n)
    print(f"jax on {devices}; {dtype} matmul peak {peak:.1f} TFLOP/s", flush=True)
    report = {"backend": "jax", "devices": devices, "matmul_peak_tflops": peak,
              "matmul_dtype": dtype,
              "spec_tflops": spec_tflops or None, "rows": []}
    for name in MODELS:
        directory = os.path.join(data, name)
        if not os.path.isdir(directory):
            continue
        row = run_one(name, directory, warmup_steps, max_steps, precision)
        rate, flops = row["train_examples_per_s"], row["train_flops_per_example"]
        if rate:
            row["achieved_tflops"] = rate * flops / 1e12
            row["mfu_measured_peak"] = row["achieved_tflops"] / peak
            if spec_tflops:
                row["mfu_spec"] = row["achieved_tflops"] / spec_tflops
        report["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("validation", "test")}),
              flush=True)
        print(f"  test auc {row['test']['auc']:.4f} group_auc {row['test']['group_auc']:.4f}",
              flush=True)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "device_check.json"), "w") as f:
            json.dump(report, f, indent=2, default=float)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_check",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="here: tokenize and build (needs TensorFlow)")
    prep.add_argument("--out", default="device_check_data")
    prep.add_argument("--minilm", default=os.path.join(os.path.dirname(REPO), "shared",
                                                       "models", "all-MiniLM-L6-v2"),
                      help="a local all-MiniLM-L6-v2 directory ('' to leave it out)")
    prep.add_argument("--work_dir", default="runs/device_check_work")
    go = sub.add_parser("run", help="there: train, time, evaluate (JAX)")
    go.add_argument("--data", default="device_check_data")
    go.add_argument("--out", default="")
    go.add_argument("--warmup_steps", type=int, default=20)
    go.add_argument("--max_steps", type=int, default=0, help="0: the config's schedule")
    go.add_argument("--spec_tflops", type=float, default=0.0,
                    help="the chip's dense bf16 peak, for a second MFU (H200: 989)")
    go.add_argument("--matmul_n", type=int, default=8192)
    go.add_argument("--precision", default="", choices=("", "float32", "mixed_bfloat16"),
                    help="override the prepared mixed_bfloat16 (a CPU compares in float32)")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        if args.minilm and not os.path.isdir(args.minilm):
            raise SystemExit(f"--minilm {args.minilm}: not a directory")
        print(json.dumps(prepare(args.out, args.minilm, args.work_dir), indent=2))
    else:
        run(args.data, args.out, args.warmup_steps, args.spec_tflops, args.max_steps,
            args.matmul_n, args.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
