"""The ``cross_encoder`` kind: ``[CLS] user side [SEP] item [SEP]`` through one BERT
(models/bert_recommender.py), the reranker and teacher. Its featurizer is
models/layers/text_pair_packer.py's ``TextPairPacker``."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from bert_recommender.explainability.pair_scorer import PairScorer
from bert_recommender.explainability.token_attributions import integrated_gradients_tensors
from bert_recommender.models.bert_recommender import BERTRecommender
from bert_recommender.models.layers.text_pair_packer import TextPairPacker, special_token_ids
from trainer import backend
from trainer.errors import ConfigError
from trainer.kind_registry import register
from trainer.kinds import endpoints
from trainer.kinds.base import ModelKind
from trainer.kinds.text import text_backbone, text_settings, tokenizer_of, user_side_composer


@register("cross_encoder")
class CrossEncoder(ModelKind):
    """``[CLS] user side [SEP] item [SEP]`` through one BERT: the reranker and teacher."""

    description = ("cross-encoder: one BERT over 'user side [SEP] candidate', sigmoid "
                   "click head (reranker and teacher)")
    uses_text = True
    explains_words = True
    # Its rows in benchmarks/quality.py are the variants named there (bert, bert_rerank,
    # bert_pretrained): no default row.
    benchmark_overrides = None

    def check_config(self, cfg):
        super().check_config(cfg)
        m = cfg.model
        if not m.pretrained and m.hidden_dim % m.num_heads:
            raise ConfigError(f"config key 'model.hidden_dim' ({m.hidden_dim}) must be "
                              f"divisible by 'model.num_heads' ({m.num_heads})")

    def benchmark_settings(self, cfg):
        return {**text_settings(cfg), "sequence_length": cfg.data.sequence_length}

    def featurizer(self, cfg, vocabulary, catalogue, ids, cache_dir=None):
        return TextPairPacker(tokenizer_of(cfg, vocabulary), cfg.data.sequence_length,
                              cfg.data.item_max_tokens)

    def build(self, cfg, featurizer, ids, train_table):
        m = cfg.model
        backbone = text_backbone(cfg, featurizer.tokenizer.vocabulary_size())
        return BERTRecommender(backbone, dropout=m.head_dropout, pooling=m.pooling)

    def dummy_batch(self, featurizer):
        return {**super().dummy_batch(featurizer),
                **featurizer(tf.constant(["a"]), tf.constant(["b"]))}

    def explanation_scorer(self, cfg, model, featurizer):
        return (PairScorer(model, featurizer, batch_size=cfg.train.eval_batch_size),
                user_side_composer(cfg.data.max_history))

    def item_embeddings(self, model, featurizer, item_ids, catalogue, ids, item_text_fields,
                        item_index=None, batch_size=64):
        """Each item's text packed alone, with an empty user side (``[CLS] [SEP] item
        [SEP]``): :meth:`BERTRecommender.pooled_output`, what the click head sees. The
        cross-encoder's representation of the item without a user, not a trained item
        tower."""
        texts = [catalogue[i].text(item_text_fields) for i in item_ids]
        encode = backend.compiled_forward(model, "pooled_output")
        empty = [""] * batch_size
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            # Pad the last batch to batch_size so the function is traced once.
            features = featurizer(tf.constant(empty), tf.constant(chunk + empty[len(chunk):]))
            out.append(keras.ops.convert_to_numpy(encode(features))[: len(chunk)])
        vectors = np.concatenate(out).astype(np.float32) if out else np.zeros([0, 0], np.float32)
        description = (f"{type(model).__name__} pooled output (pooling={model.pooling}) of "
                       "'[CLS] [SEP] item text [SEP]': the click head's input for the item "
                       f"with an empty user side; item text fields: "
                       f"{', '.join(item_text_fields)}")
        return list(item_ids), vectors, description

    def add_serving_endpoints(self, archive, model, packer, item_index=None):
        if not packer.built:  # built by its first call; a freshly loaded run's is not
            packer(tf.constant(["a"]), tf.constant(["b"]))
        archive.track(packer)

        def serve_text(user_text, item_text):
            return endpoints.outputs(model(packer(user_text, item_text), training=False))

        def serve_tokens(token_ids, segment_ids):
            return endpoints.outputs(model({"token_ids": token_ids, "segment_ids": segment_ids},
                                           training=False))

        tokenizer = packer.tokenizer
        vocabulary = tf.constant(tokenizer.get_vocabulary())
        special_ids = list(special_token_ids(tokenizer).values())

        def explain(user_text, item_text):
            packed = packer(user_text, item_text)
            ig = integrated_gradients_tensors(
                model, packed["token_ids"], packed["segment_ids"], special_ids,
                fill_id=special_ids[0], steps=endpoints.EXPLAIN_STEPS)
            return {"tokens": tf.gather(vocabulary, packed["token_ids"]),
                    "attributions": ig["attributions"], "click_probability": ig["score"],
                    "baseline_probability": ig["baseline_score"]}

        archive.add_endpoint(
            "serving_default", serve_text,
            input_signature=[tf.TensorSpec([None], tf.string, name="user_text"),
                             tf.TensorSpec([None], tf.string, name="item_text")])
        archive.add_endpoint(
            "serve_tokens", serve_tokens,
            input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                             tf.TensorSpec([None, None], tf.int32, name="segment_ids")])
        archive.add_endpoint(
            "explain", explain,
            input_signature=[tf.TensorSpec([None], tf.string, name="user_text"),
                             tf.TensorSpec([None], tf.string, name="item_text")])

    def serving_request(self, packer, table):
        return {"user_text": tf.constant(table.user_text.astype(str)),
                "item_text": tf.constant(table.item_text.astype(str))}

    def add_token_endpoints(self, archive, model, packer, item_index=None):
        def serve(token_ids, segment_ids):
            return endpoints.outputs(model({"token_ids": token_ids, "segment_ids": segment_ids},
                                           training=False))

        archive.add_endpoint("serving_default", serve, input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="token_ids"),
            tf.TensorSpec([None, None], tf.int32, name="segment_ids")])
        contract = {
            "interaction": "cross_encoder", "sequence_length": packer.sequence_length,
            "inputs": {"token_ids": "int32 [batch, n <= sequence_length]: [CLS] user side "
                                    "[SEP] candidate [SEP], then [PAD] (id 0)",
                       "segment_ids": "int32 [batch, n]: 0 for [CLS], the user side and its "
                                      "[SEP]; 1 for the candidate and its [SEP]; 0 at padding"}}
        return packer.tokenizer, contract

    def token_request(self, packer, **raw_inputs):
        packed = packer(tf.constant(raw_inputs["user_text"]),
                        tf.constant(raw_inputs["item_text"]))
        return {"token_ids": packed["token_ids"], "segment_ids": packed["segment_ids"]}
