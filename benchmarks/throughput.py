"""Training, input-pipeline, serving and explanation throughput against the PyTorch peer
and the machine's measured matmul peak, in one run.

    python -m benchmarks.throughput --out runs/throughput [--sizes tiny,small,minilm] [--peer]

Protocol (everything is measured in the same process run, so ratios hold even where
absolute times drift on a shared machine):

* Sizes (sequence length 128, batch 16, vocabulary 30,522 like BERT's): tiny = 2 layers /
  hidden 64 / 2 heads / FFN 256; small = 4 / 256 / 4 / 1024; minilm = 6 / 384 / 12 / 1536.
* **Ours**: BERTRecommender built by ``train_lib.build_model`` and compiled by
  ``train_lib.compile_model`` (AdamW, warmup/decay, clipping, BCE on the logit), fed by
  ``train_lib.make_train_dataset`` (the real tf.data pipeline: synthetic canonical data ->
  pair table -> in-graph WordPiece tokenization and packing -> batches), trained with
  ``model.fit``; ``ours_xla`` is the same with ``train.jit_compile=True``.
* **Peers**: ``torch``: transformers' ``BertForSequenceClassification`` (one output, BCE,
  AdamW) in its own virtual environment (``benchmarks/peer_env.py``), on pre-generated token
  batches; ``kerashub``: keras-hub's ``BertTextClassifier`` (one output, BCE, AdamW) on the
  same packed tf.data batches as ours. Models use dropout 0.1.
* Timing: after warm-up, ``--rounds`` rounds; in each round every implementation of a size
  runs one timed window of ``steps`` training steps, in turn (interleaved). A Keras window
  is the second epoch of a two-epoch ``fit`` (:func:`timed_fit_window`), so per-call setup
  is excluded as it is for the peer, whose worker times only its steps. A row reports the
  median examples/s over its windows. The machine's load average is recorded before and
  after: numbers from a busy machine are not comparable.
* **MFU** = examples/s x training FLOPs per example / measured fp32 matmul peak. Training
  FLOPs = 3 x forward FLOPs (backward = 2 x forward), forward FLOPs counted from the shapes
  (:func:`forward_flops_per_example`: the encoder's matmuls and attention, the pooler and
  head; embeddings, softmax, LayerNorm and the optimizer are not counted). The peak is the
  median rate of large ``tf.matmul`` calls on this machine in this run.
* **Input pipeline**: examples/s ``make_train_dataset`` delivers when iterated alone,
  against the fastest training consumption measured.
* **Serving**: the exported SavedModel loaded in a fresh process (``benchmarks/
  serving_probe.py``): ``serving_default`` on raw strings, batch-1 latency p50/p99 and batch-64
  throughput, against the in-process model called on token ids (compiled ``tf.function``).
* **Explanation cost**: integrated gradients for one example (32 steps, compiled) in units of
  one training step (``train_on_batch``) on a batch of 32, same model.
* **Scaling**: one epoch of the tiny model over TFRecord shards of 1x, 2x and 4x the data, each
  in a fresh process: seconds per epoch and peak resident memory.

Output: a table on stdout and ``OUT/throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.timing import (call_times, latency_summary, median_seconds, peak_rss_mb,
                               timed_fit_window)

SIZES = {
    "tiny": {"num_layers": 2, "hidden_dim": 64, "num_heads": 2, "intermediate_dim": 256},
    "small": {"num_layers": 4, "hidden_dim": 256, "num_heads": 4, "intermediate_dim": 1024},
    "minilm": {"num_layers": 6, "hidden_dim": 384, "num_heads": 12, "intermediate_dim": 1536},
}
SEQUENCE_LENGTH = 128
BATCH_SIZE = 16
VOCABULARY_SIZE = 30522
# Timed steps per window: about 3-10 s each on 2 CPU cores.
WINDOW_STEPS = {"tiny": 40, "small": 8, "minilm": 3}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------
# FLOPs and the machine's peak
# ---------------------------------------------------------------------------------------

def forward_flops_per_example(num_layers: int, hidden_dim: int, intermediate_dim: int,
                              sequence_length: int, **_) -> int:
    """Forward FLOPs of one example (a multiply-add counts 2).

    Per layer: Q, K, V and output projections 4 x 2*S*H*H; attention scores QK^T and the
    weighted sum of V 2 x 2*S*S*H; the feed-forward block 2 x 2*S*H*I. Then the pooler
    (2*H*H, on one position) and the click head (2*H).
    """
    s, h, i = sequence_length, hidden_dim, intermediate_dim
    per_layer = 8 * s * h * h + 4 * s * s * h + 4 * s * h * i
    return num_layers * per_layer + 2 * h * h + 2 * h


def training_flops_per_example(size: dict, sequence_length: int = SEQUENCE_LENGTH) -> int:
    """Forward + backward = 3 x forward (the backward pass costs two forwards)."""
    return 3 * forward_flops_per_example(sequence_length=sequence_length, **size)


def measure_matmul_peak(n: int = 1024, repeats: int = 7, calls: int = 10) -> float:
    """Median fp32 GFLOP/s of ``calls`` chained ``n x n`` matmuls in one tf.function."""
    import tensorflow as tf

    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n]) / n ** 0.5

    @tf.function
    def chain(x):
        for _ in range(calls):
            x = tf.matmul(x, b)
        return tf.reduce_sum(x)

    chain(a).numpy()
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        chain(a).numpy()
        rates.append(2 * n ** 3 * calls / (time.perf_counter() - started) / 1e9)
    return statistics.median(rates)


# ---------------------------------------------------------------------------------------
# Data and implementations
# ---------------------------------------------------------------------------------------

def benchmark_config(size_name: str, jit_compile: bool = False, tfrecord_dir: str = ""):
    """configs/tiny.yaml with the benchmark's model size, sequence length and batch."""
    from trainer import config as config_lib

    size = SIZES[size_name]
    overrides = [f"model.{k}={v}" for k, v in size.items()] + [
        f"model.max_sequence_length={SEQUENCE_LENGTH}", "model.dropout=0.1",
        "model.head_dropout=0.1", "model.normalize_first=false", "model.pooling=cls",
        "model.kind=cross_encoder",  # the cross-encoder: the peers are cross-encoders too
        f"data.sequence_length={SEQUENCE_LENGTH}", "data.item_max_tokens=32",
        f"train.batch_size={BATCH_SIZE}", f"train.jit_compile={str(jit_compile).lower()}",
        "train.learning_rate=1e-4", "train.epochs=1"]
    if tfrecord_dir:
        overrides.append(f"data.tfrecord_dir={tfrecord_dir}")
    return config_lib.load_config(os.path.join(REPO, "configs", "tiny.yaml"), overrides)


def make_benchmark_data(num_examples: int = 4000, seed: int = 0):
    """A synthetic pair table and a WordPiece vocabulary padded to BERT's 30,522 entries
    (so the embedding table, whose update is a real cost, has BERT's size)."""
    from trainer.data import input_pipeline
    from trainer.data import synthetic

    users = max(8, num_examples // 20)
    catalogue, examples = synthetic.generate(num_items=400, num_users=users,
                                             impressions_per_user=4,
                                             candidates_per_impression=5, seed=seed)
    examples = (examples * (1 + num_examples // max(1, len(examples))))[:num_examples]
    ids = input_pipeline.IdVocabulary.build(examples, catalogue)
    table = input_pipeline.make_pair_table(examples, catalogue, ["title", "categories",
                                                                 "description"], 5, ids)
    texts = [item.text(["title", "categories", "description"]) for item in catalogue.values()]
    vocabulary = input_pipeline.learn_vocabulary(texts, 1000, lowercase=True)
    vocabulary += [f"[unused{i}]" for i in range(VOCABULARY_SIZE - len(vocabulary))]
    return table, vocabulary


class OursTrainer:
    """BERTRecommender through train_lib's build/compile/dataset and ``model.fit``."""

    def __init__(self, size_name: str, table, vocabulary, jit_compile: bool = False,
                 warmup_steps: int = 3):
        import tensorflow as tf

        from trainer.training import train_lib

        self.cfg = benchmark_config(size_name, jit_compile)
        self.packer = train_lib.make_packer(self.cfg, vocabulary)
        strategy = tf.distribute.get_strategy()
        with strategy.scope():
            self.model = train_lib.build_model(self.cfg, self.packer, None, table)
        train_lib.compile_model(self.cfg, self.model, self.packer, strategy, total_steps=10 ** 6)
        self.dataset = train_lib.make_train_dataset(self.cfg, table, self.packer, BATCH_SIZE)
        self.window(warmup_steps)

    def window(self, steps: int) -> float:
        return timed_fit_window(self.model, self.dataset, steps)


class KerasHubTrainer:
    """keras-hub's BertTextClassifier (one output, BCE, AdamW) on the same packed batches."""

    def __init__(self, size_name: str, table, vocabulary, warmup_steps: int = 3):
        import keras
        import keras_hub
        import tensorflow as tf

        from trainer.data import input_pipeline
        from trainer.training import train_lib

        cfg = benchmark_config(size_name)
        packer = train_lib.make_packer(cfg, vocabulary)
        size = SIZES[size_name]
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=len(vocabulary), max_sequence_length=SEQUENCE_LENGTH,
            dropout=0.1, **size)
        self.model = keras_hub.models.BertTextClassifier(backbone, num_classes=1,
                                                         preprocessor=None)
        self.model.compile(optimizer=keras.optimizers.AdamW(1e-4, weight_decay=0.01),
                           loss=keras.losses.BinaryCrossentropy(from_logits=True),
                           jit_compile=False)

        def with_mask(features, label):
            return ({"token_ids": features["token_ids"],
                     "segment_ids": features["segment_ids"],
                     "padding_mask": tf.not_equal(features["token_ids"], 0)},
                    tf.expand_dims(label, -1))

        self.dataset = input_pipeline.make_dataset(
            table, BATCH_SIZE, packer=packer, training=True, repeat=True,
            cache_tokens=True).map(with_mask)
        self.window(warmup_steps)

    def window(self, steps: int) -> float:
        return timed_fit_window(self.model, self.dataset, steps)


class TorchTrainer:
    """The PyTorch + transformers peer in its own virtual environment."""

    def __init__(self, size_name: str, venv_python: str, threads: int):
        from benchmarks.peer_env import PeerWorker

        size = SIZES[size_name]
        self.worker = PeerWorker(venv_python, {
            "num_layers": size["num_layers"], "hidden": size["hidden_dim"],
            "heads": size["num_heads"], "intermediate": size["intermediate_dim"],
            "vocab": VOCABULARY_SIZE}, seq=SEQUENCE_LENGTH, batch=BATCH_SIZE, threads=threads)
        self.info = self.worker.ready

    def window(self, steps: int) -> float:
        return float(self.worker.window(steps)["seconds"])

    def close(self):
        self.worker.close()


# ---------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------

def interleaved_windows(trainers: dict, steps: int, rounds: int) -> dict:
    """``{impl: [seconds per window]}``: each round runs one window of every trainer."""
    seconds = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            seconds[name].append(trainer.window(steps))
    return seconds


def training_rows(size_name: str, seconds: dict, steps: int, peak_gflops: float) -> list:
    flops = training_flops_per_example(SIZES[size_name])
    rows = []
    for impl, windows in seconds.items():
        rates = [steps * BATCH_SIZE / s for s in windows]
        rate = statistics.median(rates)
        rows.append({"size": size_name, "impl": impl, "train_examples_per_s": rate,
                     "examples_per_s_windows": rates,
                     "achieved_gflops": rate * flops / 1e9,
                     "mfu": rate * flops / (peak_gflops * 1e9),
                     "training_flops_per_example": flops})
    return rows


def measure_input_pipeline(table, vocabulary, batches: int = 200) -> float:
    """Examples/s the training dataset delivers on its own (after one warm-up batch)."""
    from trainer.training import train_lib

    cfg = benchmark_config("tiny")
    dataset = train_lib.make_train_dataset(cfg, table, train_lib.make_packer(cfg, vocabulary),
                                           BATCH_SIZE)
    iterator = iter(dataset)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * BATCH_SIZE / (time.perf_counter() - started)


def measure_explanation_cost(trainer: OursTrainer, repeats: int = 10) -> dict:
    """IG (32 steps) on one example vs ``train_on_batch`` on 32 examples, same model."""
    from bert_recommender.explainability.token_attributions import integrated_gradients_tensors

    batch = next(iter(trainer.dataset.unbatch().batch(32)))
    features, labels = batch
    tokenizer = trainer.packer.tokenizer
    special = [tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")]
    ids, segments = features["token_ids"][:1], features["segment_ids"][:1]

    def ig():
        return integrated_gradients_tensors(trainer.model, ids, segments, special,
                                            special[0], steps=32)["attributions"].numpy()

    def step():
        return trainer.model.train_on_batch(features, labels)

    ig_seconds, step_seconds = median_seconds(ig, repeats), median_seconds(step, repeats)
    return {"ig_seconds": ig_seconds, "train_step_batch32_seconds": step_seconds,
            "ig_in_train_steps": ig_seconds / step_seconds}


def measure_serving(trainer: OursTrainer, table, batch_calls: int = 20,
                    latency_calls: int = 100) -> dict:
    """SavedModel on raw strings in a fresh process vs the in-process model on token ids."""
    import tensorflow as tf

    from trainer import kinds
    from trainer.serving import export

    model = trainer.model
    users = [str(t) for t in table.user_text[:64]]
    items = [str(t) for t in table.item_text[:64]]
    packed = trainer.packer(tf.constant(users), tf.constant(items))
    call = tf.function(lambda ids, seg: model({"token_ids": ids, "segment_ids": seg},
                                              training=False))

    ids, segments = packed["token_ids"], packed["segment_ids"]
    in_process = latency_summary(
        call_times(lambda: call(ids, segments).numpy(), batch_calls),
        call_times(lambda: call(ids[:1], segments[:1]).numpy(), latency_calls))
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = export.export_saved_model(model, os.path.join(tmp, "export"),
                                               kinds.kind_class("cross_encoder")(),
                                               trainer.packer)
        inputs = os.path.join(tmp, "inputs.json")
        with open(inputs, "w") as f:
            json.dump({"user_text": users, "item_text": items,
                       "token_ids": packed["token_ids"].numpy().tolist(),
                       "segment_ids": packed["segment_ids"].numpy().tolist()}, f)
        probe = subprocess.run(
            [sys.executable, "-m", "benchmarks.serving_probe", "--export_dir", export_dir,
             "--inputs", inputs, "--batch_calls", str(batch_calls), "--latency_calls",
             str(latency_calls)], capture_output=True, text=True, cwd=REPO, timeout=600)
    if probe.returncode != 0:
        raise RuntimeError(f"serving probe failed:\n{probe.stderr[-2000:]}")
    saved_model = json.loads(probe.stdout.strip().splitlines()[-1])
    overhead = (in_process["batch64_examples_per_s"]
                / saved_model["raw_strings"]["batch64_examples_per_s"] - 1.0)
    # The same comparison inside the fresh process (serve_tokens vs serving_default),
    # measured back to back, is less exposed to drift between the two processes.
    same_process = (saved_model["token_ids"]["batch64_examples_per_s"]
                    / saved_model["raw_strings"]["batch64_examples_per_s"] - 1.0)
    return {"in_process_token_ids": in_process, "saved_model_fresh_process": saved_model,
            "raw_string_overhead_batch64": overhead,
            "raw_string_overhead_vs_serve_tokens_batch64": same_process}


def scaling_worker(pattern: str, num_examples: int, vocab_path: str) -> dict:
    """One epoch of the tiny model over TFRecord shards (run in a fresh process)."""
    import tensorflow as tf

    from trainer.data import input_pipeline
    from trainer.training import train_lib

    cfg = benchmark_config("tiny")
    packer = train_lib.make_packer(cfg, vocab_path)
    strategy = tf.distribute.get_strategy()
    with strategy.scope():
        model = train_lib.build_model(cfg, packer, None, None)
    train_lib.compile_model(cfg, model, packer, strategy, total_steps=10 ** 6)
    dataset = input_pipeline.make_dataset(tf.io.gfile.glob(pattern), BATCH_SIZE, packer=packer,
                                          training=True, repeat=True)
    steps = num_examples // BATCH_SIZE
    model.fit(dataset, epochs=1, steps_per_epoch=5, verbose=0)  # warm-up: tracing
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds = time.perf_counter() - started
    return {"examples": num_examples, "epoch_seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def measure_scaling(table, vocabulary, base_examples: int, factors=(1, 2, 4)) -> dict:
    """Epoch time and peak memory at each data factor, each in its own process."""
    from trainer.data import input_pipeline

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        vocab_path = os.path.join(tmp, "vocab.txt")
        with open(vocab_path, "w") as f:
            f.write("\n".join(vocabulary) + "\n")
        for factor in factors:
            rows = base_examples * factor
            repeated = _repeat_table(table, rows)
            directory = os.path.join(tmp, f"x{factor}")
            input_pipeline.write_tfrecords(repeated, directory, "train",
                                           examples_per_shard=max(256, rows // 8))
            code = ("import json, sys; from benchmarks.throughput import scaling_worker; "
                    f"print(json.dumps(scaling_worker({directory + '/*.tfrecord'!r}, {rows}, "
                    f"{vocab_path!r})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 cwd=REPO, timeout=1800)
            if out.returncode != 0:
                raise RuntimeError(f"scaling worker failed:\n{out.stderr[-2000:]}")
            run = json.loads(out.stdout.strip().splitlines()[-1])
            run["factor"] = factor
            runs.append(run)
    base = runs[0]
    for run in runs:
        run["time_ratio"] = run["epoch_seconds"] / base["epoch_seconds"]
        run["memory_ratio"] = run["peak_rss_mb"] / base["peak_rss_mb"]
    return {"runs": runs, "size": "tiny",
            "seconds_per_1k_examples": [1000 * r["epoch_seconds"] / r["examples"]
                                        for r in runs]}


def _repeat_table(table, rows: int):
    import dataclasses

    import numpy as np

    index = np.arange(rows) % len(table)
    return dataclasses.replace(table, **{
        name: (None if value is None else value[index])
        for name, value in dataclasses.asdict(table).items()})


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------

def format_table(result: dict) -> str:
    peak = result["machine"]["matmul_peak_gflops"]
    lines = [f"matmul peak (fp32, measured): {peak:.1f} GFLOP/s", "",
             f"{'size':<8}{'impl':<10}{'train ex/s':>12}{'GFLOP/s':>10}{'MFU':>8}"
             f"{'ours/impl':>11}"]
    ours = {r["size"]: r["train_examples_per_s"] for r in result["rows"] if r["impl"] == "ours"}
    for row in result["rows"]:
        ratio = ours.get(row["size"], float("nan")) / row["train_examples_per_s"]
        lines.append(f"{row['size']:<8}{row['impl']:<10}{row['train_examples_per_s']:>12.1f}"
                     f"{row['achieved_gflops']:>10.1f}{row['mfu']:>8.1%}{ratio:>11.2f}")
    pipe = result.get("input_pipeline")
    if pipe:
        lines += ["", f"input pipeline: {pipe['examples_per_s']:.0f} ex/s alone = "
                      f"{pipe['ratio_to_fastest_training']:.1f}x the fastest training "
                      f"({pipe['fastest_training_examples_per_s']:.0f} ex/s)"]
    for size, serving in (result.get("serving") or {}).items():
        fresh = serving["saved_model_fresh_process"]["raw_strings"]
        local = serving["in_process_token_ids"]
        lines.append(
            f"serving {size}: raw strings (fresh process) batch-64 "
            f"{fresh['batch64_examples_per_s']:.0f} ex/s vs token ids in process "
            f"{local['batch64_examples_per_s']:.0f} ex/s: overhead "
            f"{serving['raw_string_overhead_batch64']:+.1%} (vs serve_tokens in the same "
            f"process {serving['raw_string_overhead_vs_serve_tokens_batch64']:+.1%}); "
            "batch-1 p50/p99 "
            f"{fresh['batch1_p50_ms']:.1f}/{fresh['batch1_p99_ms']:.1f} ms")
    for size, cost in (result.get("explanation_cost") or {}).items():
        lines.append(f"explanation {size}: IG (32 steps) = {cost['ig_in_train_steps']:.2f} "
                     "train steps of batch 32")
    scaling = result.get("scaling")
    if scaling:
        for run in scaling["runs"]:
            lines.append(f"scaling x{run['factor']}: {run['examples']} examples, "
                         f"{run['epoch_seconds']:.1f} s/epoch (x{run['time_ratio']:.2f}), "
                         f"peak RSS {run['peak_rss_mb']:.0f} MB (x{run['memory_ratio']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", default="tiny,small,minilm")
    parser.add_argument("--peer", action="store_true",
                        help="also time PyTorch + transformers (installs its own venv)")
    parser.add_argument("--peer_venv", default=os.path.join(tempfile.gettempdir(),
                                                            "bert_recommender_peer_venv"))
    parser.add_argument("--no_kerashub", action="store_true")
    parser.add_argument("--no_xla", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window_scale", type=float, default=1.0,
                        help="multiplies the steps per window (tests use a small value)")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--scaling_examples", type=int, default=2048,
                        help="1x of the scaling test (0 skips it)")
    parser.add_argument("--scaling_factors", default="1,2,4",
                        help="data factors of the scaling test, each in its own process")
    parser.add_argument("--serving_sizes", default="tiny,small")
    parser.add_argument("--scaling_only", action="store_true",
                        help="run only the scaling test (rows, serving etc. stay empty)")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = sorted(set(sizes) - set(SIZES))
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; choose from {list(SIZES)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    venv_python = None
    if args.peer:
        from benchmarks.peer_env import ensure_peer_env
        started = time.perf_counter()
        venv_python = ensure_peer_env(args.peer_venv)
        print(f"peer environment ready in {time.perf_counter() - started:.0f} s", flush=True)

    threads = os.cpu_count() or 1
    load_before = os.getloadavg()
    peak = measure_matmul_peak()
    result = {"machine": {"cpu_count": threads, "platform": platform.platform(),
                          "python": platform.python_version(), "tensorflow": tf.__version__,
                          "keras": keras.__version__, "matmul_peak_gflops": peak,
                          "load_average_before": load_before},
              "settings": {"sequence_length": SEQUENCE_LENGTH, "batch_size": BATCH_SIZE,
                           "vocabulary_size": VOCABULARY_SIZE, "rounds": args.rounds,
                           "sizes": {s: SIZES[s] for s in sizes}},
              "rows": [], "serving": {}, "explanation_cost": {}}
    print(f"matmul peak: {peak:.1f} GFLOP/s", flush=True)
    table, vocabulary = make_benchmark_data(args.examples)
    serving_sizes = {s.strip() for s in args.serving_sizes.split(",") if s.strip()}
    for size in ([] if args.scaling_only else sizes):
        keras.utils.set_random_seed(0)
        trainers = {"ours": OursTrainer(size, table, vocabulary)}
        if not args.no_xla:
            trainers["ours_xla"] = OursTrainer(size, table, vocabulary, jit_compile=True)
        if not args.no_kerashub:
            trainers["kerashub"] = KerasHubTrainer(size, table, vocabulary)
        if venv_python:
            trainers["torch"] = TorchTrainer(size, venv_python, threads)
            result["machine"]["peer"] = trainers["torch"].info
        steps = max(1, int(WINDOW_STEPS[size] * args.window_scale))
        seconds = interleaved_windows(trainers, steps, args.rounds)
        if "torch" in trainers:
            trainers.pop("torch").close()
        result["rows"] += training_rows(size, seconds, steps, peak)
        result["explanation_cost"][size] = measure_explanation_cost(trainers["ours"])
        if size in serving_sizes:
            result["serving"][size] = measure_serving(trainers["ours"], table)
        print(f"{size}: " + ", ".join(f"{r['impl']} {r['train_examples_per_s']:.1f} ex/s"
                                      for r in result["rows"] if r["size"] == size),
              flush=True)
        del trainers
        keras.backend.clear_session()

    if result["rows"]:
        fastest = max(r["train_examples_per_s"] for r in result["rows"])
        pipeline_rate = measure_input_pipeline(table, vocabulary)
        result["input_pipeline"] = {"examples_per_s": pipeline_rate,
                                    "fastest_training_examples_per_s": fastest,
                                    "ratio_to_fastest_training": pipeline_rate / fastest}
    if args.scaling_examples:
        factors = tuple(int(f) for f in args.scaling_factors.split(",") if f.strip())
        result["scaling"] = measure_scaling(table, vocabulary, args.scaling_examples, factors)
    result["machine"]["load_average_after"] = os.getloadavg()
    print("\n" + format_table(result))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "throughput.json")
    from trainer.io import write_json
    write_json(path, result)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
