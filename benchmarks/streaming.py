"""Streaming at scale: `prepare` speed, peak memory of `prepare` and `train` as the log grows,
and training throughput streamed from TFRecord shards against the in-memory path.

    python -m benchmarks.streaming --sizes 1000000,20000000 --out runs/streaming

For each size N (examples), in fresh processes (peak RSS is each process' own maximum):

1. ``python -m trainer.task prepare`` of configs/scale.yaml with N / 40 users (8 impressions
   x 5 candidates each): seconds, examples/s, the peak RSS of the writing process and of
   the largest forked reader;
2. ``python -m trainer.task train`` streaming from it (``--steps`` steps, then evaluation on
   the fixed 2,000 evaluated users, export): peak RSS;
3. at the smallest size only, training throughput (the second of two timed epochs of
   ``--steps`` steps, input pipeline included) streamed from the shards, and from the
   in-memory table with and without ``data.cache_tokens``.

Writes ``streaming.json`` and prints a table. Not a test: it takes minutes to an hour.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

USERS_PER_EXAMPLE = 1 / 40  # configs/scale.yaml: 8 impressions x 5 candidates per user
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "scale.yaml")


def _peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def _child(argv: list[str]) -> dict:
    """Runs ``python -m benchmarks.streaming --child ...`` and returns its RESULT line."""
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--child", *argv],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv}: exit {done.returncode}\n{done.stderr[-4000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return {**json.loads(line[len("RESULT "):]), "wall_seconds": round(time.time() - started, 1)}


def _overrides(size: int, steps: int, extra=()) -> list[str]:
    users = max(1, round(size * USERS_PER_EXAMPLE))
    return [f"data.synthetic.num_users={users}", f"train.steps_per_epoch={steps}",
            *extra]


def _run_child(args) -> dict:
    """In the child: one measured job."""
    from trainer import config as config_lib
    if args.child == "prepare":
        from trainer.data import prepare
        cfg = config_lib.load_config(CONFIG, args.set)
        manifest = prepare.prepare(cfg, args.dir)
        total = sum(c["examples"] for c in manifest["counts"].values())
        return {"examples": total, "seconds": manifest["seconds"],
                "examples_per_second": manifest["examples_per_second"],
                "peak_rss_mb": _peak_rss_mb(),
                # the largest of the forked processes that generate the source
                "reader_peak_rss_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN)}
    if args.child == "train":
        from trainer.training import train_lib
        cfg = config_lib.load_config(CONFIG, args.set)
        results = train_lib.train(cfg, args.model_dir)
        return {"test_auc": results["test"]["auc"], "train_seconds": results["train"]["seconds"],
                "peak_rss_mb": _peak_rss_mb()}
    if args.child == "throughput":
        return _throughput(config_lib.load_config(CONFIG, args.set), args.model_dir)
    raise ValueError(args.child)


def _throughput(cfg, work_dir: str) -> dict:
    """Examples/s of the second of two fits of ``train.steps_per_epoch`` steps each."""
    from benchmarks.timing import timed_fit_window
    from trainer.training import distribute, train_lib

    prepared = train_lib.prepare_data(cfg, work_dir)
    packer = train_lib.make_packer(cfg, prepared.vocabulary, prepared)
    strategy = distribute.make_strategy(cfg.runtime)
    with strategy.scope():
        model = train_lib.build_model(cfg, packer, prepared.ids, prepared.tables["train"])
    steps = cfg.train.steps_per_epoch
    train_lib.compile_model(cfg, model, packer, strategy, 2 * steps)
    data = train_lib.make_train_dataset(cfg, prepared.tables["train"], packer,
                                        cfg.train.batch_size)

    seconds = timed_fit_window(model, data, steps)
    return {"examples_per_second": round(steps * cfg.train.batch_size / seconds, 1),
            "peak_rss_mb": _peak_rss_mb()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,20000000")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", default="runs/streaming")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(_run_child(args)))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    report = {"config": CONFIG, "steps": args.steps, "sizes": {}}
    for size in sizes:
        data_dir = os.path.join(args.out, f"data_{size}")
        base = _overrides(size, args.steps)
        row = {"prepare": _child(["prepare", "--dir", data_dir,
                                  *sum((["--set", o] for o in base), [])])}
        row["train"] = _child(["train", "--model_dir", os.path.join(args.out, f"run_{size}"),
                               *sum((["--set", o] for o in base + [
                                   f"data.tfrecord_dir={data_dir}"]), [])])
        report["sizes"][size] = row
        print(json.dumps({size: row}), flush=True)
    smallest = min(sizes)
    base = _overrides(smallest, args.steps)
    modes = {"streamed": [f"data.tfrecord_dir={os.path.join(args.out, f'data_{smallest}')}"],
             "in_memory": ["data.cache_tokens=false"],
             "in_memory_cached": ["data.cache_tokens=true"]}
    report["throughput"] = {}
    for mode, extra in modes.items():
        report["throughput"][mode] = _child(
            ["throughput", "--model_dir", os.path.join(args.out, f"throughput_{mode}"),
             *sum((["--set", o] for o in base + extra), [])])
        print(json.dumps({mode: report["throughput"][mode]}), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "streaming.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(f"\n{'examples':>12} {'prepare ex/s':>13} {'prepare MB':>11} {'reader MB':>10} "
          f"{'train MB':>9}")
    for size, row in report["sizes"].items():
        print(f"{size:>12} {row['prepare']['examples_per_second']:>13.0f} "
              f"{row['prepare']['peak_rss_mb']:>11.0f} "
              f"{row['prepare']['reader_peak_rss_mb']:>10.0f} {row['train']['peak_rss_mb']:>9.0f}")
    print(f"\ntraining examples/s at {smallest} examples:")
    for mode, row in report["throughput"].items():
        print(f"  {mode:<18} {row['examples_per_second']:>9.1f}  (peak {row['peak_rss_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
