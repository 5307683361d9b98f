"""Fixtures of the explainability tests (their tiny text model: tests/harness.py)."""

import pytest

from bert_recommender.explainability.pair_scorer import PairScorer
from tests.harness import make_model, make_packer


@pytest.fixture(scope="module")
def tiny_scorer():
    """A PairScorer over a randomly initialised 2-layer model."""
    return PairScorer(make_model(), make_packer())
