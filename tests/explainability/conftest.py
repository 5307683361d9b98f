"""Fixtures of the explainability tests (their tiny text model: tests/harness.py)."""

import pytest

from bert_recommender.explainability.pair_scorer import PairScorer
from tests.harness import make_model, make_packer


@pytest.fixture(scope="module")
def tiny_scorer():
    """A PairScorer over a randomly initialised 2-layer model."""
    return PairScorer(make_model(), make_packer())


@pytest.fixture(scope="module")
def sharp_scorer():
    """A PairScorer over a 1-layer tiny model whose word-piece embeddings are scaled by 8.

    Large embeddings make the model curve along the integrated-gradients path (the random
    tiny model is nearly linear there, so any step count is complete on it): 2 quadrature
    steps then miss completeness by 2.5-6 % on the tests' pairs, 4 steps by up to 2.3 %,
    8 steps by 1e-5 (measured)."""
    model = make_model(num_layers=1)
    embeddings = next(v for v in model.weights if "token_embedding" in v.path)
    embeddings.assign(embeddings.numpy() * 8.0)
    return PairScorer(model, make_packer())
