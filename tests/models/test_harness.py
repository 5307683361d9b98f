"""The one model harness (tests/harness.py) run for every registered kind: build through
the registry, one fit step, get_config and .keras round trips, catalogue scoring, and the
SavedModel signatures. A kind added to the registry is tested here without a new line."""

import pytest

from tests.harness import BACKEND, run_model_harness
from trainer import kinds

# Variants of a kind's settings that change its graph (poolings, backbones, ids).
VARIANTS = {
    "cross_encoder": [["model.pooling=mean"],
                      ["model.normalize_first=true", "model.pooling=first"]],
    "two_tower": [["model.item_ids=true", "model.user_layers=1"]],
    "sasrec": [["train.loss=full_softmax"]],
    "frozen_two_tower": [["train.loss=full_softmax", "model.item_ids=true", "model.adapter=moe"]],
}
# Under `make test`'s JAX pass every kind runs on its default settings: the variants swap
# Keras layers that are the same code on either engine, and cost that pass ~65 s of CI.
CASES = [(name, []) for name in kinds.names()] + (
    [(name, variant) for name, variants in VARIANTS.items() for variant in variants]
    if BACKEND == "tensorflow" else [])


@pytest.mark.parametrize("name, overrides", CASES,
                         ids=[f"{n}{'-' + '-'.join(o) if o else ''}" for n, o in CASES])
def test_every_registered_kind(name, overrides, tmp_path):
    # A variant changes the model's graph, which fitting, get_config, .keras and catalogue
    # scoring exercise; the SavedModel signatures are the kind's own code, so they are
    # traced and checked once per kind (about 30 s each), on its default settings.
    run_model_harness(name, tmp_path, *overrides, saved_model=not overrides)
