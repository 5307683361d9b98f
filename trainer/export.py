"""SavedModel export with tokenization in the graph, written atomically.

``<model_dir>/export`` gets two signatures for a text model:

* ``serving_default(user_text: string[None], item_text: string[None])`` ->
  ``{"click_probability": float32[None], "logit": float32[None]}``; tokenizes in the graph,
  so loading it needs ``import tensorflow_text`` first.
* ``serve_tokens(token_ids: int32[None, None], segment_ids: int32[None, None])`` -> the same
  outputs, for tools without tensorflow-text ops (saved_model_cli, plain TF Serving).
* ``explain(user_text, item_text)`` -> ``{"tokens": string[None, L], "attributions":
  float32[None, L], "click_probability", "baseline_probability": float32[None]}``: integrated
  gradients (32 Gauss-Legendre steps, [PAD] baseline) of the click probability per token, so
  a served model can answer "why". Attributions sum to click_probability -
  baseline_probability; padding positions get token "[PAD]" and attribution 0.

An id-based baseline gets ``serving_default(user_index, item_index)``. The archive is
written to a temporary directory and renamed into place, so a crash never leaves a
half-written SavedModel at ``export/``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from explainability.token_attributions import integrated_gradients_tensors
from trainer.datasets.canonical import atomic_directory

EXPLAIN_STEPS = 32


def _outputs(logits):
    logits = tf.cast(logits, tf.float32)
    return {"click_probability": tf.sigmoid(logits), "logit": logits}


def build_archive(model: keras.Model, packer=None) -> keras.export.ExportArchive:
    """An ExportArchive with the serving signatures described in the module docstring."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    if packer is not None:
        if not packer.built:  # built by its first call; a freshly loaded run's is not
            packer(tf.constant(["a"]), tf.constant(["b"]))
        archive.track(packer)

        def serve_text(user_text, item_text):
            return _outputs(model(packer(user_text, item_text), training=False))

        def serve_tokens(token_ids, segment_ids):
            return _outputs(model({"token_ids": token_ids, "segment_ids": segment_ids},
                                  training=False))

        tokenizer = packer.tokenizer
        vocabulary = tf.constant(tokenizer.get_vocabulary())
        special_ids = [tokenizer.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]")]

        def explain(user_text, item_text):
            packed = packer(user_text, item_text)
            ig = integrated_gradients_tensors(
                model, packed["token_ids"], packed["segment_ids"], special_ids,
                fill_id=special_ids[0], steps=EXPLAIN_STEPS)
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
    else:
        def serve_ids(user_index, item_index):
            return _outputs(model({"user_index": user_index, "item_index": item_index},
                                  training=False))

        archive.add_endpoint(
            "serving_default", serve_ids,
            input_signature=[tf.TensorSpec([None], tf.int32, name="user_index"),
                             tf.TensorSpec([None], tf.int32, name="item_index")])
    return archive


def export_saved_model(model: keras.Model, export_dir: str, packer=None) -> str:
    """Writes the SavedModel to a temporary sibling directory, then renames it into place."""
    with atomic_directory(export_dir) as tmp:
        build_archive(model, packer).write_out(tmp, verbose=False)
    return export_dir


def load_serving_fn(export_dir: str, signature: str = "serving_default"):
    """Loads an exported signature (importing tensorflow_text so its ops are registered)."""
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the graph uses)

    loaded = tf.saved_model.load(export_dir)
    return loaded.signatures[signature]
