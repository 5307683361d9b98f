"""How often the audit's log-odds skew intervals tell the truth, over many synthetic data
seeds (the audit's data measure, trainer/audit_lib.log_odds_skews, on each test split).

    python -m benchmarks.audit_coverage --seeds 30 --planted 1.5 [--users 600] [--bootstrap 1000]

For each seed the generator runs twice, with ``provider_bias`` 0 and ``--planted`` (on
"acme"). Reported: with the knob off, the share of seeds where every provider's interval
holds 0 (the intervals are simultaneous, nominal 95%) and the share of single intervals
that do; with it on, the share where acme's interval holds the planted value and
excludes 0, and acme's mean estimate. Not a test: minutes.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _test_split(seed: int, users: int, bias: float):
    from trainer.data import synthetic
    catalogue, examples = synthetic.generate(num_items=80, num_users=users,
                                             impressions_per_user=4,
                                             candidates_per_impression=5, seed=seed,
                                             provider_bias=bias)
    test = [ex for ex in examples if ex.split == "test"]
    names = list(synthetic.PROVIDERS)
    group = np.array([names.index(catalogue[ex.candidate].provider) for ex in test])
    clicks = np.array([ex.label for ex in test], dtype=np.float64)
    relevance = np.array([ex.extras.get("true_relevance", ex.extras["true_probability"])
                          for ex in test], dtype=np.float64)
    impressions: dict = {}
    for row, ex in enumerate(test):
        impressions.setdefault(ex.impression_id, []).append(row)
    return clicks, relevance, group, names, [np.array(r) for r in impressions.values()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--planted", type=float, default=1.5)
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    from trainer.responsible.audit_lib import log_odds_skews

    family, single, found, estimates = [], [], [], []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        for bias in (0.0, args.planted):
            clicks, relevance, group, names, rows_of = _test_split(seed, args.users, bias)
            samples = [rng.integers(0, len(rows_of), len(rows_of))
                       for _ in range(args.bootstrap)]
            skews = log_odds_skews(clicks, relevance, group, names, rows_of, samples)
            if bias == 0.0:
                holds = [s["interval"][0] <= 0.0 <= s["interval"][1] for s in skews.values()]
                family.append(all(holds))
                single.extend(holds)
            else:
                acme = skews["acme"]
                found.append(acme["interval"][0] <= args.planted <= acme["interval"][1]
                             and acme["interval"][0] > 0.0)
                estimates.append(acme["value"])
    result = {"seeds": args.seeds, "users": args.users, "bootstrap": args.bootstrap,
              "planted": args.planted,
              "off_all_intervals_hold_0": float(np.mean(family)),
              "off_single_interval_holds_0": float(np.mean(single)),
              "on_acme_interval_holds_planted_and_excludes_0": float(np.mean(found)),
              "on_acme_mean_estimate": float(np.mean(estimates)),
              "on_acme_estimate_sd": float(np.std(estimates))}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
