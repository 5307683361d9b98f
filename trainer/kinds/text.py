"""What the text kinds share: the tokenizer of a run and its BERT encoder."""

from __future__ import annotations

import functools

import keras_hub

from bert_recommender.models.bert_recommender import BERTRecommender
from bert_recommender.models.layers.pre_ln_bert_backbone import PreLNBertBackbone
from trainer.data import input_pipeline


def tokenizer_of(cfg, vocabulary):
    """The run's WordPiece tokenizer: the pretrained checkpoint's, or one over the
    vocabulary learned from the catalogue (a token list or a vocab.txt path)."""
    return input_pipeline.make_tokenizer(vocabulary=vocabulary, lowercase=cfg.data.lowercase,
                                         pretrained=cfg.model.pretrained)


def text_backbone(cfg, vocabulary_size: int):
    """The BERT encoder of a text model: pretrained, or random init of the config's sizes
    (pre-LN when ``model.normalize_first``, with ``model.activation``; see
    models/layers/pre_ln_bert_backbone.py)."""
    m = cfg.model
    if m.pretrained:
        return BERTRecommender.load_backbone(m.pretrained)
    sizes = dict(vocabulary_size=vocabulary_size, num_layers=m.num_layers,
                 num_heads=m.num_heads, hidden_dim=m.hidden_dim,
                 intermediate_dim=m.intermediate_dim, dropout=m.dropout,
                 max_sequence_length=m.max_sequence_length)
    if m.normalize_first:
        return PreLNBertBackbone(activation=m.activation, **sizes)
    return keras_hub.models.BertBackbone(**sizes)


def text_settings(cfg) -> dict:
    """The text encoder's settings a benchmark row records (sizes only from random init)."""
    m = cfg.model
    settings = {}
    if not m.pretrained:
        settings.update(num_layers=m.num_layers, hidden_dim=m.hidden_dim,
                        num_heads=m.num_heads, intermediate_dim=m.intermediate_dim,
                        vocab_size=cfg.data.vocab_size, normalize_first=m.normalize_first,
                        activation=m.activation)
    settings.update(pooling=m.pooling, item_text_fields=list(cfg.data.item_text_fields))
    return settings


def user_side_composer(max_history: int):
    """``compose(query, titles oldest first)``: the cross-encoder's user side, as training
    wrote it (``input_pipeline.user_side_text``)."""
    return functools.partial(_user_side, max_history=max_history)


def _user_side(query, titles, max_history):
    return input_pipeline.user_side_text(query, titles, max_history)
