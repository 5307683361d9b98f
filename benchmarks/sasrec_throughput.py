"""SASRec training throughput at equal architecture: our ``sasrec`` kind against RecBole's
SASRec, trained in one interleaved run on data of the same shape.

    python -m benchmarks.sasrec_throughput --out runs/sasrec_throughput \\
        [--batch 256] [--items 4385] [--rounds 5] [--steps 20] [--recbole_venv /tmp/recbole_venv]

Protocol (both measured in the same run, interleaved, so the ratio holds even where
absolute times drift on a shared machine):

* Sizes (defaults; flags change them): 2 transformer layers, width 64, 2 heads, FFN 256,
  history length 50, cross-entropy over every one of ``--items`` items (4,385 by
  default: the Amazon Scientific catalogue of docs/benchmarks.md), batch ``--batch``
  (256 for both: RecBole's default of 2048 is far from a CPU training batch).
* **Ours** (``ours``): the ``sasrec`` kind of configs/sequences.yaml with
  ``train.loss=full_softmax`` (:func:`ours_overrides`: those sizes, dropout 0.5, the most
  recent item's state as the user, no max-interest term, dot logits, Adam at 1e-3 without
  weight decay, warm-up or clipping), built by ``train_lib.build_model``, compiled by
  ``train_lib.compile_model``, fed by ``train_lib.make_train_dataset`` (our real tf.data
  pipeline) over synthetic RecBole-style benchmark files (:func:`write_sequence_files`,
  read by the ``sequences`` source through ``train_lib.prepare_data``) and trained with
  ``model.fit``; ``--xla`` adds ``ours_xla``, the same with ``train.jit_compile=true``.
* **RecBole** (``recbole``): RecBole 1.2.1's SASRec (``benchmarks/recbole_sasrec_peer.py``)
  at the same sizes with its own defaults (dropout 0.5/0.5, Adam 1e-3), trained step by
  step by RecBole's own ``Trainer._train_epoch`` on pre-generated batches, in RecBole's
  virtual environment and its own process (``benchmarks.recbole_peer.ensure_env``,
  ``benchmarks.peer_env.PeerWorker``).
* Data: histories of lengths uniform in 1..50, items uniform, a uniform target, for both
  (ours as ``--train_rows`` rows of benchmark files, RecBole as 4 pre-generated batches).
* Timing (as ``benchmarks.throughput``): after 3 warm-up steps each, ``--rounds`` rounds;
  in each round every implementation runs one timed window of ``--steps`` training steps,
  in turn. A Keras window is the second epoch of a two-epoch ``fit``
  (``benchmarks.timing.timed_fit_window``), so per-call setup is excluded as it is for the
  peer, whose worker times only its steps. A row reports the median examples/s over its
  windows (steps x batch / seconds); ``ratio`` is ours / RecBole's. The machine's load
  average is recorded before and after: numbers from a busy machine are not comparable.
* Parameters: each model's trainable parameter count (they differ by our per-item bias, one
  position and the LayerNorms each side has; see :data:`DIFFERENCES`).

What still differs (:data:`DIFFERENCES`, also written into the JSON): the architectures
are the same size but not identical, and our side pays for its input pipeline where
RecBole's batches are prepared tensors.

Output: a table on stdout and ``OUT/sasrec_throughput.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks.throughput import interleaved_windows
from benchmarks.timing import timed_fit_window

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "recbole_sasrec_peer.py")
DATASET = "sasrec_throughput"
# The architecture of the comparison (RecBole's SASRec defaults).
SIZE = {"layers": 2, "hidden": 64, "heads": 2, "intermediate": 256, "seq": 50}
ITEMS = 4385  # Amazon Scientific's catalogue (docs/benchmarks.md)
BATCH = 256
TRAIN_ROWS = 20000
ROUNDS = 5
STEPS = 20  # timed steps per window
WARMUP_STEPS = 3
DROPOUT = 0.5  # RecBole's hidden_dropout_prob and attn_dropout_prob for SASRec
LEARNING_RATE = 1e-3  # RecBole's default
GOAL = 1.2  # ours / RecBole's examples/s
DIFFERENCES = [
    "blocks: ours pre-LN (keras-hub TransformerEncoder, normalize_first) with no LayerNorm "
    "on the input embeddings; RecBole post-LN with LayerNorm + dropout on item + position "
    "embeddings",
    "dropout: ours one rate (model.dropout=0.5) for attention probabilities, the attention "
    "and feed-forward outputs and the item id embeddings; RecBole 0.5 for attention "
    "probabilities (attn_dropout_prob) and 0.5 for the embeddings and block outputs "
    "(hidden_dropout_prob): the rates match, our config cannot set the two apart",
    "sequence: ours reads 1 + history positions (an empty, masked query slot first) with a "
    "padding mask; RecBole reads history positions with a causal mask; both attend over "
    "the full padded length",
    "read-out: ours the most recent item's output (user_pooling=first); RecBole the last "
    "position's (gather_indexes): the same item",
    "logits: ours user . item / sqrt(d) + item bias + global bias over the catalogue; "
    "RecBole user . item over its item table, padding row included",
    "optimizer: ours AdamW with weight decay 0 (Adam), a linear-decay schedule from 1e-3 "
    "without warm-up, no clipping, and fit's AUC metric updated each step; RecBole Adam "
    "1e-3, constant",
    "input: ours from tf.data (shuffled in-memory rows featurized to id tensors each "
    "step) inside fit; RecBole from 4 prepared Interaction batches (its DataLoader is not "
    "timed)",
]


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

def random_histories(rng, rows: int, items: int, seq: int) -> list:
    """``rows`` histories of 0-based item indices, oldest first, lengths uniform in 1..seq,
    items uniform (the distribution the RecBole worker draws its batches from)."""
    lengths = rng.integers(1, seq + 1, size=rows)
    return [rng.integers(0, items, size=n).tolist() for n in lengths]


def write_sequence_files(directory: str, items: int, rows: int, seq: int,
                         seed: int = 0) -> str:
    """Synthetic benchmark files for the ``sequences`` source in ``directory``; returns it.

    ``<name>.train.inter``: ``rows`` rows (user r, a random history, a target); targets
    cycle through a permutation of the catalogue, so every item is a training target (the
    full softmax masks items training never saw) once ``rows >= items``.
    ``.valid.inter`` / ``.test.inter``: one row for each of the first 8 users.
    ``.item2index`` / ``.text``: items ``i0..i{N-1}`` with a placeholder text."""
    if rows < items:
        raise ValueError(f"--train_rows ({rows}) must be at least --items ({items}), so "
                         "that every item is a training target")
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, DATASET)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    order = rng.permutation(items)
    histories = random_histories(rng, rows, items, seq)
    with open(prefix + ".train.inter", "w", encoding="utf-8") as f:
        f.write(header)
        for r, history in enumerate(histories):
            f.write(f"{r}\t{' '.join(map(str, history))}\t{order[r % items]}\n")
    for part in ("valid", "test"):
        held = random_histories(rng, min(8, rows), items, seq)
        with open(f"{prefix}.{part}.inter", "w", encoding="utf-8") as f:
            f.write(header)
            for r, history in enumerate(held):
                f.write(f"{r}\t{' '.join(map(str, history))}\t{rng.integers(items)}\n")
    with open(prefix + ".item2index", "w", encoding="utf-8") as f:
        f.writelines(f"i{k}\t{k}\n" for k in range(items))
    with open(prefix + ".text", "w", encoding="utf-8") as f:
        f.write("item_id:token\ttext:token_seq\n")
        f.writelines(f"i{k}\titem {k}\n" for k in range(items))
    return directory


# ---------------------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------------------

def ours_overrides(data_dir: str, size: dict, batch: int, jit_compile: bool = False) -> list:
    """The ``--set`` overrides of configs/sequences.yaml that make our side: the ``sasrec``
    kind at ``size`` with the full softmax, and RecBole's dropout and optimizer where our
    config can express them."""
    return [
        "model.kind=sasrec", "train.loss=full_softmax",
        f"model.user_layers={size['layers']}", f"model.user_heads={size['heads']}",
        f"model.hidden_dim={size['hidden']}", f"model.intermediate_dim={size['intermediate']}",
        f"model.dropout={DROPOUT}", "model.max_interest=false", "model.user_pooling=first",
        "model.similarity=dot",
        f"data.data_dir={data_dir}", f"data.sequences.name={DATASET}",
        f"data.max_history={size['seq']}",
        # Positives only (the full softmax reads no sampled negatives); one evaluation
        # negative keeps the unused validation/test splits valid.
        "data.sequences.negatives_per_positive=0", "data.sequences.eval_negatives=1",
        f"train.batch_size={batch}", f"train.learning_rate={LEARNING_RATE}",
        "train.weight_decay=0", "train.warmup_fraction=0", "train.clipnorm=0",
        f"train.jit_compile={str(jit_compile).lower()}"]


def ours_config(data_dir: str, size: dict, batch: int, jit_compile: bool = False):
    from trainer import config as config_lib

    return config_lib.load_config(os.path.join(REPO, "configs", "sequences.yaml"),
                                  ours_overrides(data_dir, size, batch, jit_compile))


def trainable_parameters(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))


class OursTrainer:
    """The model kind of ``cfg`` (here ``sasrec``; benchmarks/text_tower_cost.py times
    frozen text towers) through train_lib's build/compile/dataset and ``model.fit``.
    ``packer``: the kind's featurizer when the caller made it (with its cache)."""

    def __init__(self, cfg, prepared, warmup_steps: int = WARMUP_STEPS, packer=None):
        import tensorflow as tf

        from trainer import kinds
        from trainer.training import train_lib

        self.cfg = cfg
        kind = kinds.for_config(cfg)
        if packer is None:
            packer = train_lib.make_packer(cfg, None, prepared)
        strategy = tf.distribute.get_strategy()
        with strategy.scope():
            self.model = train_lib.build_model(cfg, packer, prepared.ids,
                                               prepared.tables["train"])
        train_lib.compile_model(cfg, self.model, packer, strategy, total_steps=10 ** 6)
        rows = kind.training_rows(cfg, prepared.tables["train"])
        self.dataset = train_lib.make_train_dataset(cfg, rows, packer, cfg.train.batch_size)
        self.info = {"params": trainable_parameters(self.model),
                     "all_params": int(self.model.count_params()),
                     "catalogue_size": int(self.model.catalogue_size),
                     "training_rows": len(rows), "jit_compile": cfg.train.jit_compile}
        self.window(warmup_steps)

    def window(self, steps: int) -> float:
        return timed_fit_window(self.model, self.dataset, steps)


class RecBoleTrainer:
    """RecBole's SASRec in its own virtual environment (``recbole_sasrec_peer.py``)."""

    def __init__(self, venv_python: str, size: dict, items: int, batch: int, threads: int,
                 script: str = PEER_SCRIPT, timeout: float = 900.0):
        from benchmarks.peer_env import PeerWorker

        self.worker = PeerWorker(venv_python, {
            "num_layers": size["layers"], "hidden": size["hidden"], "heads": size["heads"],
            "intermediate": size["intermediate"], "vocab": items}, seq=size["seq"],
            batch=batch, threads=threads, script=script, timeout=timeout)
        self.info = self.worker.ready

    def window(self, steps: int) -> float:
        return float(self.worker.window(steps)["seconds"])

    def close(self):
        self.worker.close()


# ---------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------

def rows_from_windows(seconds: dict, steps: int, batch: int, params: dict) -> list:
    """One row per implementation: the median of ``steps * batch / seconds`` over its
    windows, every window's rate, and its parameter count."""
    rows = []
    for impl, windows in seconds.items():
        rates = [steps * batch / s for s in windows]
        rows.append({"impl": impl, "examples_per_s": statistics.median(rates),
                     "examples_per_s_windows": rates, "seconds_windows": list(windows),
                     "params": params.get(impl)})
    return rows


def ratios(rows: list, peer: str = "recbole") -> dict:
    """Each of our rows' examples/s over the peer's."""
    rate = {r["impl"]: r["examples_per_s"] for r in rows}
    if peer not in rate:
        return {}
    return {impl: value / rate[peer] for impl, value in rate.items() if impl != peer}


def format_table(result: dict) -> str:
    lines = [f"{'impl':<10}{'examples/s':>12}{'params':>10}{'ours/recbole':>14}",
             *(f"{r['impl']:<10}{r['examples_per_s']:>12.1f}{r['params'] or 0:>10,}"
               f"{result['ratio'].get(r['impl'], float('nan')):>14.2f}"
               for r in result["rows"])]
    before = result["machine"]["load_average_before"]
    after = result["machine"]["load_average_after"]
    lines.append(f"load average before {before[0]:.2f}, after {after[0]:.2f}; goal: ours >= "
                 f"{GOAL}x RecBole's examples/s")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sasrec_throughput",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=BATCH, help="training batch, both sides")
    parser.add_argument("--items", type=int, default=ITEMS, help="catalogue size (softmax)")
    parser.add_argument("--layers", type=int, default=SIZE["layers"])
    parser.add_argument("--hidden", type=int, default=SIZE["hidden"])
    parser.add_argument("--heads", type=int, default=SIZE["heads"])
    parser.add_argument("--intermediate", type=int, default=SIZE["intermediate"])
    parser.add_argument("--seq", type=int, default=SIZE["seq"], help="history length")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps per window")
    parser.add_argument("--warmup_steps", type=int, default=WARMUP_STEPS)
    parser.add_argument("--train_rows", type=int, default=TRAIN_ROWS,
                        help="rows of our synthetic training file (>= --items)")
    parser.add_argument("--xla", action="store_true", help="also time ours with XLA")
    parser.add_argument("--threads", type=int, default=0,
                        help="RecBole's torch threads (0 = the machine's cores)")
    parser.add_argument("--recbole_venv", default="/tmp/recbole_venv",
                        help="RecBole's virtual environment (made on first use)")
    parser.add_argument("--peer_python", default="",
                        help="run the worker with this python instead of --recbole_venv's "
                             "(tests)")
    parser.add_argument("--peer_script", default=PEER_SCRIPT, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("batch", "items", "layers", "hidden", "heads", "intermediate", "seq",
                 "rounds", "steps", "warmup_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.train_rows < args.items:
        parser.error("--train_rows must be at least --items (every item a training target)")
    size = {"layers": args.layers, "hidden": args.hidden, "heads": args.heads,
            "intermediate": args.intermediate, "seq": args.seq}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from trainer.io import write_json
    from trainer.training import train_lib

    python = args.peer_python
    if not python:
        from benchmarks import recbole_peer
        started = time.perf_counter()
        python = recbole_peer.ensure_env(args.recbole_venv)
        print(f"RecBole environment ready in {time.perf_counter() - started:.0f} s",
              flush=True)
    threads = args.threads or os.cpu_count() or 1
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version(), "tensorflow": tf.__version__,
                          "keras": keras.__version__,
                          # 0 = TensorFlow's own choice (the machine's cores).
                          "tensorflow_intra_op_threads":
                              tf.config.threading.get_intra_op_parallelism_threads(),
                          "load_average_before": os.getloadavg()},
              "settings": {**size, "items": args.items, "batch": args.batch,
                           "rounds": args.rounds, "steps_per_window": args.steps,
                           "warmup_steps": args.warmup_steps, "train_rows": args.train_rows,
                           "recbole_threads": threads, "goal_ratio": GOAL,
                           "differences": DIFFERENCES}}
    with tempfile.TemporaryDirectory(prefix="sasrec_throughput_") as tmp:
        data_dir = write_sequence_files(os.path.join(tmp, "data"), args.items,
                                        args.train_rows, args.seq)
        cfg = ours_config(data_dir, size, args.batch)
        prepared = train_lib.prepare_data(cfg, tmp)
        result["settings"]["ours_overrides"] = ours_overrides(data_dir, size, args.batch)
        keras.utils.set_random_seed(0)
        trainers = {"ours": OursTrainer(cfg, prepared, args.warmup_steps)}
        if args.xla:
            trainers["ours_xla"] = OursTrainer(ours_config(data_dir, size, args.batch, True),
                                               prepared, args.warmup_steps)
        peer = RecBoleTrainer(python, size, args.items, args.batch, threads,
                              script=args.peer_script)
        trainers["recbole"] = peer
        try:
            seconds = interleaved_windows(trainers, args.steps, args.rounds)
        finally:
            peer.close()
    result["machine"]["load_average_after"] = os.getloadavg()
    result["machine"]["peer"] = peer.info
    result["ours"] = {name: t.info for name, t in trainers.items() if name != "recbole"}
    params = {name: t.info.get("params") for name, t in trainers.items()}
    result["rows"] = rows_from_windows(seconds, args.steps, args.batch, params)
    result["ratio"] = ratios(result["rows"])
    result["parameters"] = {"ours": params["ours"], "recbole": params["recbole"],
                            "ours_over_recbole": (params["ours"] / params["recbole"]
                                                  if params["recbole"] else None)}
    result["goal"] = {"ours_over_recbole_at_least": GOAL,
                      "met": bool(result["ratio"].get("ours", 0.0) >= GOAL)}
    print("\n" + format_table(result))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "sasrec_throughput.json")
    write_json(path, result)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
