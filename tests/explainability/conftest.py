"""Tiny text models for the explainability tests: vocabulary ~40, hidden 16, 1-2 layers."""

import keras
import keras_hub
import numpy as np
import pytest

from explainability.pair_scorer import PairScorer
from models.bert_recommender import BERTRecommender
from models.layers.text_pair_packer import TextPairPacker
from trainer.data.input_pipeline import RESERVED_TOKENS

WORDS = ("looking for a laptop phone camera acme globex initech wireless waterproof vintage "
         "leather gaming compact pro new classic edition retro").split()
# "##s" lets a word split into pieces ("laptops" -> laptop ##s), as WordPiece does.
VOCABULARY = RESERVED_TOKENS + [";"] + list(WORDS) + ["##s", "##er"]


def make_packer(sequence_length=32, item_max_tokens=10):
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=list(VOCABULARY), lowercase=True)
    return TextPairPacker(tokenizer, sequence_length=sequence_length,
                          item_max_tokens=item_max_tokens)


def make_model(seed=0, pooling="first", normalize_first=True, num_layers=2):
    keras.utils.set_random_seed(seed)
    model = BERTRecommender.from_sizes(
        vocabulary_size=len(VOCABULARY), num_layers=num_layers, num_heads=2, hidden_dim=16,
        intermediate_dim=32, dropout=0.0, head_dropout=0.0, max_sequence_length=32,
        pooling=pooling, normalize_first=normalize_first)
    model({"token_ids": np.zeros([1, 32], np.int32), "segment_ids": np.zeros([1, 32], np.int32)})
    return model


@pytest.fixture(scope="module")
def tiny_scorer():
    """A PairScorer over a randomly initialised 2-layer model."""
    return PairScorer(make_model(), make_packer())


USER_TEXT = "looking for a laptop ; acme wireless laptops new ; globex vintage camera"
ITEM_TEXT = "initech wireless laptop pro"
