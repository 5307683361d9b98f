"""Rows of a quality run compared offline, from the catalogue logits it saved.

    python -m benchmarks.compare_scores --scores runs/quality/scores \\
        [--row recbole_sasrec=runs/earlier/recbole/recbole_sasrec/scores.npy] \\
        [--ensemble two_tower+frozen_text_ids+item_knn] [--against recbole_sasrec] \\
        [--bootstrap 1000] [--seed 13] [--out compare.json]

``benchmarks.quality --save_scores`` writes each row's full-ranking catalogue logits to
``OUT/scores/<row>.npz`` with the users, their held-out items and the columns each user's
ranking leaves out. This reads them back and prints, with the quality benchmark's own
metric code, ties, bootstrap and ensemble rule (the mean of per-user standardized
logits), every row's full-ranking Recall/NDCG@10/50 with 95% intervals and the paired
interval of each row's difference with the ``--against`` rows. Rows from another run on
the same split join with ``--row NAME=PATH``: another run's ``.npz``, or a RecBole peer's
``scores.npy`` (``[users, items + 1]`` in the benchmark's user order, as
``benchmarks/recbole_peer.py`` writes it). Nothing is trained.

Every file must hold the same users and the same number of items; an ``.npz`` must also
hold the same held-out items and exclusions (else a clear error names the file): the rows
are compared only on one split.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from benchmarks import quality
from trainer.errors import UserInputError
from trainer.evaluation import metrics

KEYS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50")


def load_rows(scores_dir: str, extra: list) -> tuple:
    """``(logits by row name, split)`` from ``scores_dir``'s ``*.npz`` and the ``extra``
    ``NAME=PATH`` files; ``split`` holds the shared ``users``, ``targets`` and
    ``excluded``. Raises UserInputError for a missing file or one from another split."""
    paths = {os.path.splitext(os.path.basename(p))[0]: p
             for p in sorted(glob.glob(os.path.join(scores_dir, "*.npz")))} if scores_dir \
        else {}
    if scores_dir and not paths:
        raise UserInputError(f"--scores {scores_dir}: no <row>.npz files (write them with "
                             "benchmarks.quality --save_scores)")
    for spec in extra:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserInputError(f"--row {spec!r}: expected NAME=PATH")
        paths[name] = path
    logits, split = {}, None
    for name, path in paths.items():
        if not os.path.exists(path):
            raise UserInputError(f"--row {name}: {path} does not exist")
        if path.endswith(".npz"):
            with np.load(path) as saved:
                here = {key: saved[key] for key in ("users", "targets", "excluded")}
                logits[name] = saved["logits"]
            if split is None:
                split = here
            elif not all(np.array_equal(split[key], here[key]) for key in split):
                raise UserInputError(f"{path}: its users, held-out items or exclusions differ "
                                     "from the other rows': compare rows of one split")
        else:
            logits[name] = np.load(path)
    if split is None:
        raise UserInputError("no .npz among the rows: at least one --save_scores file gives "
                             "the users, held-out items and exclusions")
    shape = split["excluded"].shape
    for name, values in logits.items():
        if values.shape != shape:
            raise UserInputError(f"row {name}: logits of shape {values.shape}, the split's "
                                 f"{shape} (users x items + 1): another split or catalogue")
    return logits, split


def compare(logits: dict, split: dict, ensembles: list, against: list, bootstrap: int,
            seed: int = 0) -> dict:
    """Each row's (and ensemble's) full-ranking metrics and paired differences with the
    ``against`` rows, as ``benchmarks.quality`` computes them."""
    for spec in ensembles:
        members = spec.split("+")
        missing = [m for m in members if m not in logits]
        if len(members) < 2 or missing:
            raise UserInputError(f"--ensemble {spec!r}: name two or more rows of the scores "
                                 f"({', '.join(sorted(logits))}); missing: {missing}")
        logits[spec] = sum(quality.standardized(logits[m], split["excluded"])
                           for m in members) / len(members)
    unknown = [name for name in against if name not in logits]
    if unknown:
        raise UserInputError(f"--against {unknown}: not a row ({', '.join(sorted(logits))})")
    per_user = {name: metrics.full_ranking_metrics(values, split["targets"],
                                                   exclude=split["excluded"], ks=(10, 50))
                for name, values in logits.items()}
    users = np.arange(len(split["targets"]))
    rows = {}
    for name in logits:
        rows[name] = quality.summarize(per_user[name], users, bootstrap, seed, KEYS)
        rows[name]["paired_difference"] = {
            other: {key: quality._paired(per_user[name][key] - per_user[other][key],
                                         bootstrap, seed) for key in ("ndcg@10", "hr@10")}
            for other in against if other != name}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scores", default="", help="a quality run's OUT/scores directory")
    parser.add_argument("--row", action="append", default=[], metavar="NAME=PATH",
                        help="another row on the same split (.npz or a RecBole scores.npy)")
    parser.add_argument("--ensemble", action="append", default=[], metavar="A+B[+C]")
    parser.add_argument("--against", action="append", default=[], metavar="ROW",
                        help="rows every other row's paired difference is taken with")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=13,
                        help="the bootstrap's seed: the quality run's data seed "
                             "(data.<source>.seed, 13 in the shipped configs) gives its "
                             "intervals to the digit")
    parser.add_argument("--out", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        logits, split = load_rows(args.scores, args.row)
        rows = compare(logits, split, args.ensemble, args.against, args.bootstrap,
                       args.seed)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(split['targets'])} users; full ranking, 95% bootstrap intervals")
    for name, row in rows.items():
        low, high = row["ci95"]["ndcg@10"]
        print(f"{name:45s} R@10 {row['hr@10']:.4f}  N@10 {row['ndcg@10']:.4f} [{low:.4f}, "
              f"{high:.4f}]  R@50 {row['hr@50']:.4f}  N@50 {row['ndcg@50']:.4f}")
        for other, values in row["paired_difference"].items():
            text = "  ".join(f"{key} {v['mean']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]"
                             for key, v in values.items())
            print(f"    - {other}: {text}")
    if args.out:
        from trainer.io import atomic_write_text
        atomic_write_text(args.out, json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
