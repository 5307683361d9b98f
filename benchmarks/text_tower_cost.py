"""What the frozen text tower's variants cost to train: pooled frozen vectors, and
fine-tuning the checkpoint's top k transformer layers over states cached below them,
beside the id-only ``sasrec`` at the same sizes, on a sequential benchmark's real data.

    python -m benchmarks.text_tower_cost --data_dir PATH/amazon-scientific \\
        --pretrained PATH/all-MiniLM-L6-v2 --out runs/text_tower_cost \\
        [--layers 0 1 2] [--losses softmax] [--steps 5] [--rounds 3] \\
        [--set KEY=VALUE ...]

Every row is ``configs/sequences_frozen.yaml`` (width 128, the latest 20 items, 64 word
pieces per text, a mixture-of-experts adapter + ids, batch 256) with ``--set`` overrides,
then ``model.text_trainable_layers`` = k for each ``--layers`` and ``train.loss`` for each
``--losses`` (``full_softmax``: every catalogue text through the trained layers in every
step; ``softmax``: the batch's distinct texts). ``sasrec`` (``--no_sasrec`` leaves it out)
is the same config without text, as the quality benchmark's width-128 row.

Per row: the one-time encoding (seconds, or 0 when the output directory's cache already
held the features; the cache's size on disk), then the training step as
``benchmarks.sasrec_throughput`` times it: the training library's model, compiled
optimizer and tf.data pipeline, ``--steps`` steps per window after warm-up, ``--rounds``
windows, the median reported as seconds per step, training examples/s, the seconds one
epoch over the training rows would take and the process's peak memory so far. Rows run
one after another, each model freed before the next (a fine-tuned row holds gigabytes of
activations: with Scientific's 64-token texts, one trained layer over the whole catalogue,
``full_softmax``, did not fit in 24 GB). The machine's load average is recorded before and
after. Output: a table on stdout and ``OUT/text_tower_cost.json``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "sequences_frozen.yaml")


def row_overrides(data_dir: str, pretrained: str, layers: int | None, loss: str,
                  extra: list) -> list:
    """The config overrides of one row (``layers`` None: the id-only ``sasrec``)."""
    base = [f"data.data_dir={data_dir}", f"train.loss={loss}", *extra]
    if layers is None:
        return [*base, "model.kind=sasrec", "model.pretrained="]
    return [*base, f"model.pretrained={pretrained}", f"model.text_trainable_layers={layers}"]


def row_name(layers: int | None, loss: str) -> str:
    kind = "sasrec" if layers is None else ("frozen" if layers == 0 else f"top{layers}")
    return f"{kind}/{loss}"


def _cache_bytes(out: str) -> dict:
    from trainer.kinds.text_vectors import CACHE_DIR

    directory = os.path.join(out, CACHE_DIR)
    if not os.path.isdir(directory):
        return {}
    return {name: os.path.getsize(os.path.join(directory, name))
            for name in sorted(os.listdir(directory))}


def format_table(rows: list) -> str:
    lines = ["| row | encode s | s/step | examples/s | epoch s (est.) | params | peak MB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['encode_seconds']} | {r['seconds_per_step']:.3f} | "
                     f"{r['examples_per_second']:,.0f} | {r['epoch_seconds']:,.0f} | "
                     f"{r['params']:,} | {r['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.text_tower_cost",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True,
                        help="a directory of sequential-benchmark files (e.g. Amazon "
                             "Scientific)")
    parser.add_argument("--pretrained", required=True,
                        help="local Hugging Face BERT directory or keras-hub preset")
    parser.add_argument("--out", required=True,
                        help="output directory (also the text-feature cache)")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2],
                        help="model.text_trainable_layers of the text rows (0: frozen)")
    parser.add_argument("--losses", nargs="+", default=["softmax"],
                        choices=["full_softmax", "softmax"], help="train.loss of each row")
    parser.add_argument("--no_sasrec", action="store_true", help="leave out the sasrec rows")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per window")
    parser.add_argument("--rounds", type=int, default=3, help="windows per row")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="dotted config override for every row")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for name in ("steps", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if any(k < 0 for k in args.layers):
        parser.error("--layers must be >= 0")
    if not os.path.isdir(args.data_dir):
        parser.error(f"--data_dir {args.data_dir}: not a directory")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from benchmarks.sasrec_throughput import OursTrainer
    from benchmarks.timing import peak_rss_mb
    from trainer import config as config_lib
    from trainer import kinds
    from trainer.errors import ConfigError
    from trainer.io import write_json
    from trainer.training import train_lib

    specs = [(k, loss) for loss in args.losses
             for k in ([] if args.no_sasrec else [None]) + list(args.layers)]
    try:
        configs = {row_name(k, loss): (k, config_lib.load_config(
            CONFIG, row_overrides(args.data_dir, args.pretrained, k, loss, args.overrides)))
            for k, loss in specs}
        for _, cfg in configs.values():
            kinds.for_config(cfg)  # each kind's own checks, before anything is written
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    os.makedirs(args.out, exist_ok=True)
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "tensorflow": tf.__version__, "keras": keras.__version__,
                          "load_average_before": os.getloadavg()},
              "settings": {"config": os.path.relpath(CONFIG, REPO),
                           "overrides": args.overrides, "steps_per_window": args.steps,
                           "rounds": args.rounds, "warmup_steps": args.warmup_steps}}
    first = next(iter(configs.values()))[1]
    prepared = train_lib.prepare_data(first, args.out)
    rows = []
    for name, (layers, cfg) in configs.items():
        started = time.perf_counter()
        packer = train_lib.make_packer(cfg, None, prepared, cache_dir=args.out)
        encoded = (getattr(packer, "encoding", {}) or {}).get("encode_seconds", 0.0)
        keras.utils.set_random_seed(0)
        trainer = OursTrainer(cfg, prepared, args.warmup_steps, packer=packer)
        print(f"{name}: ready in {time.perf_counter() - started:.0f} s "
              f"({trainer.info['params']:,} trainable parameters)", flush=True)
        seconds = [trainer.window(args.steps) for _ in range(args.rounds)]
        per_step = statistics.median(seconds) / args.steps
        batch = cfg.train.batch_size
        rows.append({"row": name, "text_trainable_layers": layers,
                     "loss": cfg.train.loss, "encode_seconds": encoded,
                     "seconds_per_step": per_step, "examples_per_second": batch / per_step,
                     "epoch_seconds": trainer.info["training_rows"] / batch * per_step,
                     "window_seconds": seconds, "peak_rss_mb": peak_rss_mb(), **trainer.info})
        print(f"{name}: {per_step:.3f} s/step", flush=True)
        del trainer, packer
        gc.collect()
        keras.backend.clear_session()
    result["machine"]["load_average_after"] = os.getloadavg()
    result["rows"] = rows
    result["cache_bytes"] = _cache_bytes(args.out)
    print("\n" + format_table(rows))
    path = os.path.join(args.out, "text_tower_cost.json")
    write_json(path, result)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
