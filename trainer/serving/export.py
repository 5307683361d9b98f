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

A two-tower model (``TwoTowerFeatures`` featurizer; text, ids or both) gets:

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

A glass-box model (``GlassBoxFeatures``; models/glass_box.py) gets
``serving_default(query: string[None], history_ids: string[None, H], item_id:
string[None])`` -> ``{"click_probability", "logit"}`` and ``explain`` (same inputs) ->
``{"words": string[None, W], "word_contributions": float32[None, W],
"item_feature_names": string[G], "item_contributions": float32[None, G], "bias",
"logit"}``: the exact decomposition of the logit ("" and 0 at padding).

An id-based baseline gets ``serving_default(user_index, item_index)``. The archive is
written to a temporary directory and renamed into place, so a crash never leaves a
half-written SavedModel at ``export/``.
"""

from __future__ import annotations

import json

import keras
import tensorflow as tf

from explainability.token_attributions import integrated_gradients_tensors
from explainability.two_tower_scorer import SlotRowView
from models.layers.text_pair_packer import special_token_ids
from trainer.data.canonical import atomic_directory
from models.glass_box import ITEM_FEATURES
from trainer.data.input_pipeline import USER_SIDE_SEPARATOR, GlassBoxFeatures, TwoTowerFeatures

EXPLAIN_STEPS = 32


def _outputs(logits):
    logits = tf.cast(logits, tf.float32)
    return {"click_probability": tf.sigmoid(logits), "logit": logits}


class _BakedItemIndex(tf.Module):
    """A run's item index as SavedModel variables and tables, for ``retrieve``."""

    def __init__(self, item_index):
        super().__init__(name="item_index")
        self.vectors = tf.Variable(item_index.vectors, trainable=False, name="vectors")
        self.id_index = tf.Variable(item_index.id_index, trainable=False, name="id_index")
        self.item_ids = tf.Variable(tf.constant(list(item_index.item_ids), tf.string),
                                    trainable=False, name="item_ids")
        # Item id -> position in the index (-1 for ids it does not hold), to drop seen items.
        self.position = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(item_index.item_ids), tf.string),
                tf.range(len(item_index), dtype=tf.int64)), default_value=-1)


def _add_retrieve_endpoint(archive, model, user_inputs, item_index,
                           user_signature: list) -> None:
    """``retrieve(*user_signature, k)``; ``user_inputs(query, history, history_ids)`` gives
    the model inputs of those users (with any placeholder candidate)."""
    baked = _BakedItemIndex(item_index)
    archive.track(baked)
    size = len(item_index)

    def retrieve(query, history, history_ids, k):
        state = model.user_state(user_inputs(query, history, history_ids), training=False)
        scores = tf.cast(model.score_matrix(state, baked.vectors, baked.id_index), tf.float32)
        # Seen items: a [b, N] mask from the history's positions (-1 = not in the index,
        # whose one-hot row is all zeros).
        seen = tf.reduce_max(tf.one_hot(baked.position.lookup(history_ids), size,
                                        dtype=tf.float32), axis=1)
        scores = tf.where(seen > 0, tf.constant(-float("inf")), scores)
        k = tf.convert_to_tensor(k, tf.int32)
        with tf.control_dependencies([
                tf.debugging.assert_positive(k, message="retrieve: k must be >= 1"),
                tf.debugging.assert_less_equal(
                    k, size, message=f"retrieve: k must be <= the index's {size} items")]):
            top = tf.math.top_k(scores, k=k, sorted=True)
        return {"item_ids": tf.gather(baked.item_ids, top.indices), "logits": top.values,
                "click_probability": tf.sigmoid(top.values)}

    archive.add_endpoint("retrieve", retrieve, input_signature=list(user_signature) + [
        tf.TensorSpec([], tf.int32, name="k")])


def _add_two_tower_endpoints(archive: keras.export.ExportArchive, model, features,
                             item_index=None) -> None:
    """The two-tower signatures of the module docstring."""
    index_table = features.index_table()
    archive.track(index_table)
    if features.tokenizer is not None:
        archive.track(features.tokenizer)

    def inputs(query, history_text, history_ids, item_text, item_id):
        return features.from_text(query, history_text, item_text, history_ids=history_ids,
                                  item_ids=item_id, index_table=index_table)

    def serve(query, history_text, history_ids, item_text, item_id):
        return _outputs(model(inputs(query, history_text, history_ids, item_text, item_id),
                              training=False))

    def user_embedding(query, history_text, history_ids):
        empty = tf.fill(tf.shape(query), "")
        x = inputs(query, history_text, history_ids, empty, empty)
        state = model.user_state(x, training=False)
        out = {"user_embedding": tf.cast(state["user"], tf.float32)}
        if model.max_interest:
            out.update(user_interests=tf.cast(state["interests"], tf.float32),
                       interest_mask=tf.cast(state["interest_mask"], tf.int32))
        return out

    def item_embedding(item_text, item_id):
        x = inputs(tf.fill(tf.shape(item_text), ""), tf.fill([tf.shape(item_text)[0], 1], ""),
                   tf.fill([tf.shape(item_text)[0], 1], ""), item_text, item_id)
        vectors = model.item_vectors(x.get("item_token_ids"), x["item_index"], training=False)
        bias = model.item_biases(x["item_index"]) + tf.cast(model.global_bias, tf.float32)
        return {"item_embedding": tf.cast(vectors, tf.float32), "item_bias": bias}

    text = tf.TensorSpec([None], tf.string)
    history = tf.TensorSpec([None, None], tf.string)
    if features.tokenizer is not None and model.item_encoder is not None:
        tokenizer = features.tokenizer.tokenizer
        vocabulary = tf.constant(tokenizer.get_vocabulary())
        special_ids = list(special_token_ids(tokenizer).values())
        view = SlotRowView(model, features.max_history, features.tokenizer.sequence_length)

        def explain(query, history_text, history_ids, item_text, item_id):
            x = inputs(query, history_text, history_ids, item_text, item_id)
            rows = view.rows(x)
            ig = integrated_gradients_tensors(view, rows, tf.zeros_like(rows), special_ids,
                                              fill_id=special_ids[0], steps=EXPLAIN_STEPS)
            slot_ids = view.slot_ids(rows)
            return {"tokens": tf.gather(vocabulary, slot_ids),
                    "attributions": tf.reshape(
                        ig["attributions"][:, features.max_history + 1:], tf.shape(slot_ids)),
                    "click_probability": ig["score"],
                    "baseline_probability": ig["baseline_score"]}

        archive.add_endpoint("explain", explain, input_signature=[
            tf.TensorSpec.from_spec(text, name="query"),
            tf.TensorSpec.from_spec(history, name="history_text"),
            tf.TensorSpec.from_spec(history, name="history_ids"),
            tf.TensorSpec.from_spec(text, name="item_text"),
            tf.TensorSpec.from_spec(text, name="item_id")])
    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec([None], tf.string, name="query"),
        tf.TensorSpec([None, None], tf.string, name="history_text"),
        tf.TensorSpec([None, None], tf.string, name="history_ids"),
        tf.TensorSpec([None], tf.string, name="item_text"),
        tf.TensorSpec([None], tf.string, name="item_id")])
    archive.add_endpoint("user_embedding", user_embedding, input_signature=[
        tf.TensorSpec.from_spec(text, name="query"),
        tf.TensorSpec.from_spec(history, name="history_text"),
        tf.TensorSpec.from_spec(history, name="history_ids")])
    archive.add_endpoint("item_embedding", item_embedding, input_signature=[
        tf.TensorSpec.from_spec(text, name="item_text"),
        tf.TensorSpec.from_spec(text, name="item_id")])
    if item_index is not None:
        def user_inputs(query, history_text, history_ids):
            empty = tf.fill(tf.shape(query), "")
            return inputs(query, history_text, history_ids, empty, empty)

        _add_retrieve_endpoint(archive, model, user_inputs, item_index, [
            tf.TensorSpec([None], tf.string, name="query"),
            tf.TensorSpec([None, None], tf.string, name="history_text"),
            tf.TensorSpec([None, None], tf.string, name="history_ids")])


def _add_glass_box_endpoints(archive: keras.export.ExportArchive, model, features) -> None:
    """The glass-box signatures of the module docstring."""
    index_table = features.index_table()
    archive.track(index_table)
    archive.track(features.word_table)
    words = tf.constant([""] + features.words)
    names = tf.constant(list(ITEM_FEATURES))

    def serve(query, history_ids, item_id):
        return _outputs(model(features.from_ids(query, history_ids, item_id, index_table),
                              training=False))

    def explain(query, history_ids, item_id):
        x = features.from_ids(query, history_ids, item_id, index_table)
        parts = model.contributions(x)
        return {"words": tf.gather(words, x["candidate_words"]),
                "word_contributions": parts["word_contributions"],
                "item_feature_names": names,
                "item_contributions": parts["item_contributions"],
                "bias": parts["bias"], "logit": parts["logit"]}

    signature = [tf.TensorSpec([None], tf.string, name="query"),
                 tf.TensorSpec([None, None], tf.string, name="history_ids"),
                 tf.TensorSpec([None], tf.string, name="item_id")]
    archive.add_endpoint("serving_default", serve, input_signature=signature)
    archive.add_endpoint("explain", explain, input_signature=signature)


def build_archive(model: keras.Model, packer=None,
                  item_index=None) -> keras.export.ExportArchive:
    """An ExportArchive with the serving signatures described in the module docstring
    (``item_index``: a two-tower run's ``retrieval.ItemIndex``, which adds ``retrieve``)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    if isinstance(packer, TwoTowerFeatures):
        _add_two_tower_endpoints(archive, model, packer, item_index)
    elif isinstance(packer, GlassBoxFeatures):
        _add_glass_box_endpoints(archive, model, packer)
    elif packer is not None:
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
        special_ids = list(special_token_ids(tokenizer).values())

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


# ---------------------------------------------------------------------------------------
# The token-id export: no tf-text op in the graph
# ---------------------------------------------------------------------------------------

TOKEN_EXPORT_CONTRACT = "token_contract.json"


def has_token_export(packer) -> bool:
    """Whether a run with this featurizer gets ``export_tokens/`` (text models: the
    cross-encoder, and two-tower models that read item text)."""
    if isinstance(packer, TwoTowerFeatures):
        return packer.tokenizer is not None
    return packer is not None and not isinstance(packer, GlassBoxFeatures)


def _two_tower_token_endpoints(archive, model, features, item_index) -> dict:
    """Two-tower signatures over token ids: what ``features.from_text`` computes, minus the
    tokenizer. Item ids stay strings (a core-TF hash table maps them)."""
    index_table = features.index_table()
    archive.track(index_table)
    length, max_history = features.tokenizer.sequence_length, features.max_history

    def inputs(query_token_ids, history_token_ids, history_ids, item_token_ids, item_id):
        history_token_ids = features.fit_history(history_token_ids, padding=0)
        history_ids = features.fit_history(history_ids)
        return {"query_token_ids": query_token_ids, "history_token_ids": history_token_ids,
                "item_token_ids": item_token_ids,
                "history_index": tf.cast(index_table.lookup(history_ids), tf.int32),
                "item_index": tf.cast(index_table.lookup(item_id), tf.int32)}

    def serve(query_token_ids, history_token_ids, history_ids, item_token_ids, item_id):
        return _outputs(model(inputs(query_token_ids, history_token_ids, history_ids,
                                     item_token_ids, item_id), training=False))

    user_signature = [tf.TensorSpec([None, length], tf.int32, name="query_token_ids"),
                      tf.TensorSpec([None, None, length], tf.int32, name="history_token_ids"),
                      tf.TensorSpec([None, None], tf.string, name="history_ids")]
    archive.add_endpoint("serving_default", serve, input_signature=user_signature + [
        tf.TensorSpec([None, length], tf.int32, name="item_token_ids"),
        tf.TensorSpec([None], tf.string, name="item_id")])
    if item_index is not None:
        def user_inputs(query_token_ids, history_token_ids, history_ids):
            empty = tf.fill(tf.shape(query_token_ids)[:1], "")
            return inputs(query_token_ids, history_token_ids, history_ids,
                          tf.zeros_like(query_token_ids), empty)

        _add_retrieve_endpoint(archive, model, user_inputs, item_index, user_signature)
    return {"interaction": "two_tower", "item_max_tokens": length,
            "max_history": max_history,
            "inputs": {"query_token_ids": f"int32 [batch, {length}]: the query's token ids, "
                                          "all 0 ([PAD]) when there is none",
                       "history_token_ids": f"int32 [batch, h, {length}]: the token ids of "
                                            "the user's most recent items, most recent "
                                            f"first; the first {max_history} are used, "
                                            "all-0 rows pad",
                       "history_ids": "string [batch, h]: those items' ids ('' pads)",
                       "item_token_ids": f"int32 [batch, {length}]: the candidate's token ids",
                       "item_id": "string [batch]: the candidate's id ('' or an id training "
                                  "never saw: scored from its text alone)",
                       "k": "int32 scalar (retrieve only): how many items to return"}}


def _cross_encoder_token_endpoints(archive, model, packer) -> dict:
    length = packer.sequence_length

    def serve(token_ids, segment_ids):
        return _outputs(model({"token_ids": token_ids, "segment_ids": segment_ids},
                              training=False))

    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec([None, None], tf.int32, name="token_ids"),
        tf.TensorSpec([None, None], tf.int32, name="segment_ids")])
    return {"interaction": "cross_encoder", "sequence_length": length,
            "inputs": {"token_ids": "int32 [batch, n <= sequence_length]: [CLS] user side "
                                    "[SEP] candidate [SEP], then [PAD] (id 0)",
                       "segment_ids": "int32 [batch, n]: 0 for [CLS], the user side and its "
                                      "[SEP]; 1 for the candidate and its [SEP]; 0 at padding"}}


def export_token_saved_model(model: keras.Model, export_dir: str, packer,
                             item_index=None) -> str:
    """``export_tokens/``: the model behind signatures that take token ids, so its graph
    holds no tensorflow-text op and any TensorFlow (``saved_model_cli``, a stock TF
    Serving build) loads it. Beside the SavedModel: ``vocab.txt`` (token id = line number)
    and ``token_contract.json`` (inputs, special token ids, lengths). Written atomically."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    if isinstance(packer, TwoTowerFeatures):
        tokenizer = packer.tokenizer.tokenizer
        contract = _two_tower_token_endpoints(archive, model, packer, item_index)
    else:
        tokenizer = packer.tokenizer
        contract = _cross_encoder_token_endpoints(archive, model, packer)
    vocabulary = [str(token) for token in tokenizer.get_vocabulary()]
    contract.update(
        special_token_ids={k: int(v) for k, v in special_token_ids(tokenizer).items()},
        vocabulary_size=len(vocabulary),
        tokenizer="the run's keras-hub BertTokenizer over vocab.txt (WordPiece); in "
                  "Python, trainer.serving.export.token_request(packer, **raw_inputs) maps the "
                  "raw-string export's inputs to these")
    with atomic_directory(export_dir) as tmp:
        archive.write_out(tmp, verbose=False)
        with tf.io.gfile.GFile(f"{tmp}/vocab.txt", "w") as f:
            f.write("\n".join(vocabulary) + "\n")
        with tf.io.gfile.GFile(f"{tmp}/{TOKEN_EXPORT_CONTRACT}", "w") as f:
            f.write(json.dumps(contract, indent=2, sort_keys=True) + "\n")
    return export_dir


def token_request(packer, **raw_inputs) -> dict:
    """The ``export_tokens`` inputs for the raw-string export's inputs: ``user_text``,
    ``item_text`` for a cross-encoder; ``query``, ``history_text``, ``history_ids``,
    ``item_text``, ``item_id`` for a two-tower model (token ids from the run's tokenizer,
    ids passed through)."""
    if isinstance(packer, TwoTowerFeatures):
        tokenize = packer.tokenizer
        return {"query_token_ids": tokenize(tf.constant(raw_inputs["query"])),
                "history_token_ids": tokenize(tf.constant(raw_inputs["history_text"])),
                "history_ids": tf.constant(raw_inputs["history_ids"]),
                "item_token_ids": tokenize(tf.constant(raw_inputs["item_text"])),
                "item_id": tf.constant(raw_inputs["item_id"])}
    packed = packer(tf.constant(raw_inputs["user_text"]), tf.constant(raw_inputs["item_text"]))
    return {"token_ids": packed["token_ids"], "segment_ids": packed["segment_ids"]}


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


def export_saved_model(model: keras.Model, export_dir: str, packer=None,
                       item_index=None) -> str:
    """Writes the SavedModel to a temporary sibling directory, then renames it into place."""
    with atomic_directory(export_dir) as tmp:
        build_archive(model, packer, item_index).write_out(tmp, verbose=False)
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
