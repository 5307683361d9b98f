"""``export_tokens/``: the model over token ids, loadable where tensorflow-text is not.

Each check runs the token export in a fresh Python process that never imports
tensorflow_text (asserted there), and compares with the raw-string export in this one."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import tensorflow as tf

from tests.harness import REPO
from trainer import kinds, runs
from trainer.serving import export

_PROBE = r"""
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
assert "tensorflow_text" not in sys.modules
request = dict(np.load(sys.argv[2], allow_pickle=False))
out = {}
for name, args in json.loads(sys.argv[3]).items():
    fn = loaded.signatures[name]
    result = fn(**{k: tf.constant(request[k]) for k in args["inputs"]},
                **{k: tf.constant(v, tf.int32) for k, v in args.get("scalars", {}).items()})
    out[name] = {k: v.numpy().tolist() if v.dtype != tf.string else
                 [[s.decode() for s in row] for row in v.numpy()] for k, v in result.items()}
print("RESULT" + json.dumps(out))
"""


def _probe(export_dir, request: dict, calls: dict, tmp_path) -> dict:
    path = tmp_path / "request.npz"
    np.savez(path, **{k: (np.asarray(v.numpy()).astype(str) if v.dtype == tf.string
                          else v.numpy()) for k, v in request.items()})
    result = subprocess.run([sys.executable, "-c", _PROBE, export_dir, str(path),
                             json.dumps(calls)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.split("RESULT", 1)[1])


def _contract(export_dir):
    with open(os.path.join(export_dir, export.TOKEN_EXPORT_CONTRACT)) as f:
        return json.load(f)


def test_cross_encoder_token_export_matches_the_raw_export(trained_run, tmp_path):
    cfg, model_dir, _ = trained_run
    tokens_dir = os.path.join(model_dir, "export_tokens")
    contract = _contract(tokens_dir)
    assert contract["interaction"] == "cross_encoder"
    assert contract["special_token_ids"]["[PAD]"] == 0
    with open(os.path.join(tokens_dir, "vocab.txt")) as f:
        assert len(f.read().splitlines()) == contract["vocabulary_size"]

    packer = runs.open_run(model_dir).featurizer
    raw = {"user_text": ["a wireless laptop ; red shoes", "garden chair"],
           "item_text": ["carbon laptop", "blue umbrella"]}
    expected = export.load_serving_fn(os.path.join(model_dir, "export"))(
        user_text=tf.constant(raw["user_text"]), item_text=tf.constant(raw["item_text"]))
    request = kinds.for_config(cfg).token_request(packer, **raw)
    got = _probe(tokens_dir, request, {"serving_default": {"inputs": list(request)}}, tmp_path)
    np.testing.assert_allclose(got["serving_default"]["click_probability"],
                               expected["click_probability"].numpy(), atol=1e-5)

    # saved_model_cli, which never imports tensorflow_text, runs it as well.
    ids, segments = (request[k].numpy().tolist() for k in ("token_ids", "segment_ids"))
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "run", "--dir", tokens_dir, "--tag_set", "serve", "--signature_def",
         "serving_default", "--input_exprs", f"token_ids={ids};segment_ids={segments}"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    block = result.stdout.split("click_probability", 1)[1].split("Result for", 1)[0]
    values = [float(v) for v in re.findall(r"[-+]?\d*\.\d+(?:e[-+]?\d+)?", block)]
    np.testing.assert_allclose(values, expected["click_probability"].numpy(), atol=1e-5)


def test_two_tower_token_export_scores_and_retrieves_like_the_raw_export(
        trained_two_tower_run, tmp_path):
    model_dir, _ = trained_two_tower_run
    run = runs.open_run(model_dir)
    cfg, packer = run.cfg, run.featurizer
    tokens_dir = os.path.join(model_dir, "export_tokens")
    assert _contract(tokens_dir)["interaction"] == "two_tower"

    ids = packer.item_ids[1:4]
    texts = packer.item_texts[1:4]
    raw = {"query": ["", "laptop"], "history_text": [[texts[0], texts[1]], [texts[2], ""]],
           "history_ids": [[ids[0], ids[1]], [ids[2], ""]],
           "item_text": [texts[2], texts[0]], "item_id": [ids[2], "never-seen-id"]}
    serve = export.load_serving_fn(os.path.join(model_dir, "export"))
    expected = serve(**{k: tf.constant(v) for k, v in raw.items()})
    retrieve = export.load_serving_fn(os.path.join(model_dir, "export"), "retrieve")
    user = {k: tf.constant(raw[k]) for k in ("query", "history_text", "history_ids")}
    expected_top = retrieve(**user, k=tf.constant(5, tf.int32))

    request = kinds.for_config(cfg).token_request(packer, **raw)
    user_inputs = ["query_token_ids", "history_token_ids", "history_ids"]
    got = _probe(tokens_dir, request, {
        "serving_default": {"inputs": list(request)},
        "retrieve": {"inputs": user_inputs, "scalars": {"k": 5}}}, tmp_path)
    np.testing.assert_allclose(got["serving_default"]["click_probability"],
                               expected["click_probability"].numpy(), atol=1e-5)
    assert got["retrieve"]["item_ids"] == [[s.decode() for s in row] for row in
                                          expected_top["item_ids"].numpy()]
    np.testing.assert_allclose(got["retrieve"]["logits"], expected_top["logits"].numpy(),
                               atol=1e-5)
    assert len(got["retrieve"]["item_ids"][0]) == 5
