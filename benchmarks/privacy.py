"""What DP-SGD (``train.privacy``) costs on the demo: AUC kept, epsilon spent, step time.

    python -m benchmarks.privacy --out runs/privacy [--config configs/demo.yaml] \\
        [--noise 0.6 --clip 1.0] [--baseline_dir runs/demo] [--timing_steps 60]

1. Trains the config twice through ``python -m trainer.task train``: as it is (skipped
   with ``--baseline_dir``, a finished run of the same config) and with
   ``train.privacy.enabled=true`` at ``--noise`` / ``--clip``. Reports each test AUC, the
   private run's share of the non-private AUC lift over 0.5, and its (epsilon, delta) from
   metrics.json.
2. Times the training step in one fresh process (both with oneDNN off, as private runs
   need): the median seconds of ``--timing_steps`` steps of each, after a warm-up, the
   private one on its Poisson batches (``batch_size`` rows on average) and the plain one on
   ``batch_size`` rows.

Writes ``privacy.json`` and prints a table. Not a test: about half an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(config: str, model_dir: str, overrides: list) -> dict:
    argv = [sys.executable, "-m", "trainer.task", "train", "--config", config,
            "--model_dir", model_dir]
    for override in overrides:
        argv += ["--set", override]
    started = time.time()
    subprocess.run(argv, check=True, capture_output=True, text=True)
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    metrics["wall_seconds"] = round(time.time() - started, 1)
    return metrics


def _timing(config: str, overrides: list, steps: int) -> dict:
    """In a child with oneDNN off: median seconds per step, plain and private."""
    import numpy as np

    from trainer import config as config_lib
    from trainer import kinds
    from trainer.training import distribute, privacy, train_lib

    cfg = config_lib.load_config(config, overrides)
    prepared = train_lib.prepare_data(cfg, os.path.join("/tmp", f"privacy-timing-{os.getpid()}"))
    packer = train_lib.make_packer(cfg, prepared.vocabulary, prepared)
    strategy = distribute.make_strategy(cfg.runtime)
    table = prepared.tables["train"]
    result = {}
    for private in (False, True):
        with strategy.scope():
            model = train_lib.build_model(cfg, packer, prepared.ids, table)
        train_lib.compile_model(cfg, model, packer, strategy, 10 * steps)
        if private:
            max_batch = privacy.max_batch_size(cfg.train.privacy, cfg.train.batch_size,
                                               len(table), 10 * steps)
            privacy.make_private(model, kinds.for_config(cfg), cfg.train.privacy,
                                 cfg.train.batch_size, max_batch)
            sampler = privacy.PoissonSampler(len(table), cfg.train.batch_size, max_batch, 0)
            data = privacy.make_dataset(table, packer, sampler)
        else:
            data = train_lib.make_train_dataset(cfg, table, packer, cfg.train.batch_size)
        iterator = iter(data)
        model.train_on_batch(*next(iterator))  # traces the step
        seconds = []
        for _ in range(steps):
            batch = next(iterator)
            started = time.perf_counter()
            model.train_on_batch(*batch)
            seconds.append(time.perf_counter() - started)
        result["private" if private else "plain"] = float(np.median(seconds))
    result["ratio"] = result["private"] / result["plain"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=os.path.join(REPO, "configs", "demo.yaml"))
    parser.add_argument("--out", default="runs/privacy")
    parser.add_argument("--noise", type=float, default=0.6)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--baseline_dir", default=None)
    parser.add_argument("--timing_steps", type=int, default=60)
    parser.add_argument("--set", action="append", default=[],
                        help="extra overrides for both runs")
    parser.add_argument("--child_timing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    private = [*args.set, "train.privacy.enabled=true",
               f"train.privacy.noise_multiplier={args.noise}",
               f"train.privacy.l2_norm_clip={args.clip}"]
    if args.child_timing:
        print("RESULT " + json.dumps(_timing(args.config, private, args.timing_steps)))
        return 0

    os.makedirs(args.out, exist_ok=True)
    if args.baseline_dir:
        with open(os.path.join(args.baseline_dir, "metrics.json")) as f:
            baseline = json.load(f)
    else:
        baseline = _train(args.config, os.path.join(args.out, "baseline"), args.set)
    dp = _train(args.config, os.path.join(args.out, "private"), private)
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.privacy", "--child_timing", "--config",
         args.config, "--noise", str(args.noise), "--clip", str(args.clip),
         "--timing_steps", str(args.timing_steps), *sum((["--set", s] for s in args.set), [])],
        check=True, capture_output=True, text=True,
        env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"})
    timing = json.loads([line for line in child.stdout.splitlines()
                         if line.startswith("RESULT ")][-1][len("RESULT "):])
    auc, dp_auc = baseline["test"]["auc"], dp["test"]["auc"]
    report = {"config": args.config, "noise_multiplier": args.noise, "l2_norm_clip": args.clip,
              "baseline_test_auc": auc, "private_test_auc": dp_auc,
              "lift_kept": (dp_auc - 0.5) / (auc - 0.5), "privacy": dp["privacy"],
              "private_train_seconds": dp["train"]["seconds"],
              "baseline_train_seconds": baseline["train"]["seconds"],
              "step_seconds": timing}
    with open(os.path.join(args.out, "privacy.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    print(f"\ntest AUC {auc:.4f} -> {dp_auc:.4f} private ({100 * report['lift_kept']:.0f}% of "
          f"the lift over 0.5) at epsilon {dp['privacy']['epsilon']:.2f}, delta "
          f"{dp['privacy']['delta']:.2g}; step {timing['plain'] * 1e3:.1f} -> "
          f"{timing['private'] * 1e3:.1f} ms ({timing['ratio']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
