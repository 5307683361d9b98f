"""Seeded negative sampling and impressions for the implicit-feedback sources (MovieLens,
the sequential benchmarks): one positive and sampled negatives per impression.

Each impression draws from its own generator, seeded by ``(seed, purpose, crc32(user),
index)``, so the same seed gives the same negatives whatever the model, the other users or
a subset of the data; another seed gives other negatives.
"""

from __future__ import annotations

import zlib

import numpy as np

from trainer.data.canonical import Example

# What a generator is for (the ``purpose`` of :func:`user_rng`).
PURPOSE_EVAL, PURPOSE_TRAIN, PURPOSE_SUBSET, PURPOSE_COLD_START = 1, 2, 3, 4


def user_rng(seed: int, purpose: int, user_id: str, index: int = 0) -> np.random.Generator:
    """The generator of one user's impression ``index`` for ``purpose``."""
    # SeedSequence takes non-negative ints only; the modulo keeps any int seed usable.
    return np.random.default_rng([seed % 2**63, purpose, zlib.crc32(user_id.encode("utf-8")),
                                  index])


def sample_negatives(rng: np.random.Generator, k: int, excluded: set, n_items: int,
                     cdf: np.ndarray | None = None) -> list:
    """``k`` distinct item codes in ``[0, n_items)`` not in ``excluded`` (fewer only if
    fewer exist), uniform or weighted by the cumulative weights ``cdf``."""
    if k <= 0:
        return []
    out: list = []
    chosen: set = set()
    for _ in range(20):  # rejection sampling: cheap when the user excludes few of the items
        need = k - len(out)
        draws = (rng.integers(n_items, size=2 * need + 8) if cdf is None else
                 np.searchsorted(cdf, rng.random(2 * need + 8) * cdf[-1], side="right"))
        for code in draws.tolist():
            if code not in excluded and code not in chosen:
                chosen.add(code)
                out.append(code)
                if len(out) == k:
                    return out
    # Most of the (weighted) catalogue is excluded: draw exactly from what is left.
    rest = np.array([c for c in range(n_items) if c not in excluded and c not in chosen],
                    dtype=np.int64)
    if cdf is not None:
        weights = np.diff(np.concatenate([[0.0], cdf]))[rest]
        rest = rest[weights > 0]
        weights = weights[weights > 0]
    need = min(k - len(out), len(rest))
    if need:
        p = None if cdf is None else weights / weights.sum()
        out.extend(rng.choice(rest, size=need, replace=False, p=p).tolist())
    return out


def impression(rng: np.random.Generator, user_id: str, impression_id: str, history: tuple,
               positive: int, negatives: list, timestamp: int, split: str,
               item_ids) -> list[Example]:
    """The examples of one impression: the positive (label 1) at a seeded position among
    the negatives (label 0), so scorers that tie cannot favour it. Item codes are mapped
    to ids through ``item_ids``."""
    candidates = [item_ids[c] for c in negatives]
    candidates.insert(int(rng.integers(len(candidates) + 1)), None)
    return [Example(user_id=user_id, impression_id=impression_id, history=history,
                    candidate=item_ids[positive] if c is None else c,
                    label=1 if c is None else 0, timestamp=int(timestamp), split=split,
                    extras={})
            for c in candidates]
