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

A two-tower model (``two_tower`` or ``sasrec``; text, ids or both) gets:

* ``serving_default(query: string[None], history_text: string[None, H], history_ids:
  string[None, H], item_text: string[None], item_id: string[None])`` ->
  ``{"click_probability", "logit"}``. ``history_text`` holds the texts of the user's
  most recent items (``Item.text(data.item_text_fields)``, most recent first, "" =
  padding) and ``history_ids`` their item ids; ``query`` is "" when there is none. Ids
  training never saw (or "") get no id feature, so a new item is scored from its text.
* ``user_embedding(query, history_text, history_ids)`` -> ``{"user_embedding":
  float32[None, d]}`` and ``item_embedding(item_text, item_id)`` -> ``{"item_embedding":
  float32[None, d], "item_bias": float32[None]}``, so item vectors can be computed once and
  cached: ``logit = dot(user_embedding, item_embedding) / sqrt(d) + item_bias``. A model
  with ``max_interest`` (the default) also returns ``user_interests`` float32[None, 1+H, d]
  (the query and each history item as the user tower sees them, zero where absent) and
  ``interest_mask`` int32[None, 1+H]; its logit adds ``max over present k of
  dot(user_interests[k], item_embedding) / sqrt(d)`` (0 when nothing is present).

* ``retrieve(query, history_text, history_ids, k: int32 scalar)`` (when the run's item
  index is given) -> ``{"item_ids": string[None, k], "logits": float32[None, k],
  "click_probability": float32[None, k]}``: the k best catalogue items for each user, best
  first, scored exactly as ``serving_default`` would score each pair. The catalogue's item
  vectors are baked in (variables), ``k`` is a runtime input (no re-export to change it),
  and items named in ``history_ids`` are never returned unless fewer than k others exist
  (then they come last with logit -inf). k outside [1, catalogue size] fails with an
  InvalidArgument error naming k.

* ``explain(query, history_text, history_ids, item_text, item_id)`` (text models) ->
  ``{"tokens": string[None, 2+H, L], "attributions": float32[None, 2+H, L],
  "click_probability", "baseline_probability"}``: integrated gradients as above over the
  word pieces of every text the model reads (slot 0 the query, then the history items
  most recent first, the candidate last); item ids are not attributed.

A glass-box model (``glass_box``; models/glass_box.py) gets
``serving_default(query: string[None], history_ids: string[None, H], item_id:
string[None])`` -> ``{"click_probability", "logit"}`` and ``explain`` (same inputs) ->
``{"words": string[None, W], "word_contributions": float32[None, W],
"item_feature_names": string[G], "item_contributions": float32[None, G], "bias",
"logit"}``: the exact decomposition of the logit ("" and 0 at padding).

An id-based baseline gets ``serving_default(user_index, item_index)``.

Each model kind adds its own signatures (``ModelKind.add_serving_endpoints`` and
``add_token_endpoints``, trainer/kinds/); this module writes the archives. The archive is
written to a temporary directory and renamed into place, so a crash never leaves a
half-written SavedModel at ``export/``.
"""

from __future__ import annotations

import json

import keras
import tensorflow as tf

try:  # private; write_archive falls back to Keras' own write_out without it
    from tensorflow.python.saved_model import save_context
except ImportError:  # pragma: no cover - another TensorFlow
    save_context = None

from bert_recommender.models.layers.text_pair_packer import special_token_ids
from trainer.data.input_pipeline import USER_SIDE_SEPARATOR
from trainer.io import atomic_directory


def build_archive(model: keras.Model, kind, featurizer=None,
                  item_index=None) -> keras.export.ExportArchive:
    """An ExportArchive with the serving signatures of ``kind`` (a
    :class:`~trainer.kinds.base.ModelKind`) described in the module docstring
    (``item_index``: a retrieving run's ``ItemIndex``, which adds ``retrieve``)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    kind.add_serving_endpoints(archive, model, featurizer, item_index)
    return archive


def write_archive(archive: keras.export.ExportArchive, directory: str) -> None:
    """``archive.write_out(directory)`` with each endpoint traced once instead of twice.

    Keras' ``write_out`` traces every endpoint to list the variables it uses, outside
    TensorFlow's save context, and ``tf.saved_model.save`` traces it again inside one: a
    ``tf.function``'s cache key holds the save context's variable policy
    (tensorflow/python/eager/polymorphic_function/function_context.py). Listing the
    variables inside a save context lets the save reuse that trace (a micro two-tower's
    raw-string export: 5.5 s -> 4.3 s warm, every endpoint traced once). Both hooks are
    private, so where either is missing (another Keras or TensorFlow) the plain
    ``write_out`` runs; tests/trainer/serving/test_export.py counts the traces.
    """
    list_resources = getattr(archive, "_filter_and_track_resources", None)
    if list_resources is not None and hasattr(save_context, "save_context"):
        def list_resources_in_a_save_context():
            with save_context.save_context(tf.saved_model.SaveOptions()):
                list_resources()

        archive._filter_and_track_resources = list_resources_in_a_save_context
    archive.write_out(directory, verbose=False)


# ---------------------------------------------------------------------------------------
# The token-id export: no tf-text op in the graph
# ---------------------------------------------------------------------------------------

TOKEN_EXPORT_CONTRACT = "token_contract.json"


def export_token_saved_model(model: keras.Model, export_dir: str, kind, featurizer,
                             item_index=None) -> str | None:
    """``export_tokens/``: the model behind signatures that take token ids, so its graph
    holds no tensorflow-text op and any TensorFlow (``saved_model_cli``, a stock TF
    Serving build) loads it. Beside the SavedModel: ``vocab.txt`` (token id = line number)
    and ``token_contract.json`` (inputs, special token ids, lengths). Written atomically.
    Returns None (and writes nothing) for kinds without text."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoints = kind.add_token_endpoints(archive, model, featurizer, item_index)
    if endpoints is None:
        return None
    tokenizer, contract = endpoints
    vocabulary = [str(token) for token in tokenizer.get_vocabulary()]
    contract.update(
        special_token_ids={k: int(v) for k, v in special_token_ids(tokenizer).items()},
        vocabulary_size=len(vocabulary),
        tokenizer="the run's keras-hub BertTokenizer over vocab.txt (WordPiece); in "
                  "Python, ModelKind.token_request(featurizer, **raw_inputs) "
                  "(trainer/kinds/) maps the raw-string export's inputs to these")
    with atomic_directory(export_dir) as tmp:
        write_archive(archive, tmp)
        with tf.io.gfile.GFile(f"{tmp}/vocab.txt", "w") as f:
            f.write("\n".join(vocabulary) + "\n")
        with tf.io.gfile.GFile(f"{tmp}/{TOKEN_EXPORT_CONTRACT}", "w") as f:
            f.write(json.dumps(contract, indent=2, sort_keys=True) + "\n")
    return export_dir


def two_tower_request(user_texts: list, item_texts: list,
                      separator: str = USER_SIDE_SEPARATOR) -> dict:
    """``serving_default`` inputs of a two-tower export from cross-encoder style user sides:
    ``"query ; newest item text ; ... ; oldest"`` (the first part is the query, "" for
    none). Item ids are left empty, so a hybrid model scores these items by their text."""
    parts = [[p.strip() for p in text.split(separator.strip())] for text in user_texts]
    width = max(1, max(len(p) - 1 for p in parts))
    history = [p[1:] + [""] * (width - len(p) + 1) for p in parts]
    return {"query": tf.constant([p[0] for p in parts]), "history_text": tf.constant(history),
            "history_ids": tf.fill([len(parts), width], ""),
            "item_text": tf.constant(list(item_texts)),
            "item_id": tf.fill([len(item_texts)], "")}


def export_saved_model(model: keras.Model, export_dir: str, kind, featurizer=None,
                       item_index=None) -> str:
    """Writes ``kind``'s SavedModel of ``model`` to a temporary sibling directory, then
    renames it into place."""
    with atomic_directory(export_dir) as tmp:
        write_archive(build_archive(model, kind, featurizer, item_index), tmp)
    return export_dir


def predict_texts(export_dir: str, user_texts: list, item_texts: list) -> dict:
    """``serving_default`` of the SavedModel at ``export_dir`` on cross-encoder style pairs
    (``"query ; newest item ; ..."``, item text), whichever interaction the run trained: a
    two-tower export gets :func:`two_tower_request`'s inputs."""
    serve = load_serving_fn(export_dir)
    if "query" in serve.structured_input_signature[1]:
        return serve(**two_tower_request(user_texts, item_texts))
    return serve(user_text=tf.constant(list(user_texts)),
                 item_text=tf.constant(list(item_texts)))


def load_serving_fn(export_dir: str, signature: str = "serving_default"):
    """Loads an exported signature (importing tensorflow_text so its ops are registered)."""
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the graph uses)

    loaded = tf.saved_model.load(export_dir)
    return loaded.signatures[signature]
