"""Explanation methods side by side on a trained run: faithfulness with 95% intervals, cost.

    python -m benchmarks.explainers --model_dir runs/demo [--num_examples 100] \\
        [--methods integrated_gradients,...,shap] [--out runs/explainers]

Protocol: ``trainer.responsible.explain_lib.run_explanations`` (what ``python -m trainer.task explain``
runs) explains the top-scored candidate of ``--num_examples`` test impressions drawn with
``--seed``; every method is scored on the same examples against a seeded random
attribution (see explainability/faithfulness.py for the metrics). ``shap`` is included when
the ``[explain]`` extra is installed.

Cost: ``seconds_per_example`` is wall time per example for each method (attributions only,
not their faithfulness scoring). Integrated gradients with ``--ig_steps`` is also timed in
isolation (median of ``--repeats`` compiled calls on one example) against one forward +
backward pass (gradients of the loss with respect to all weights, no optimizer update) on a
batch of 32 pairs of the same model: the ``ig_cost_in_fwd_bwd_32`` ratio.

Writes ``OUT/explainers.json`` (the faithfulness summary plus ``cost``) when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import keras
import tensorflow as tf

from benchmarks.timing import median_seconds
from bert_recommender.explainability import explainer as explainer_lib
from bert_recommender.explainability import token_attributions


def measure_ig_cost(scorer, cases, compose, steps: int = 32, repeats: int = 20) -> dict:
    """IG on one example vs one forward+backward pass on a batch of 32, same model."""
    model = scorer.model
    users = [case.user_text(compose) for case in cases]
    items = [case.candidate_text for case in cases]
    while len(users) < 32:
        users, items = users + users, items + items
    ids, segments = scorer.pack(users[:32], items[:32])
    ids, segments = tf.constant(ids), tf.constant(segments)
    labels = tf.ones([32], tf.float32)
    loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model({"token_ids": ids, "segment_ids": segments},
                                         training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        # A cheap reduction over every gradient makes the call wait for all of them.
        return tf.add_n([tf.reduce_sum(g.values if isinstance(g, tf.IndexedSlices) else g)
                         for g in grads if g is not None])

    special = (scorer.pad_id, scorer.cls_id, scorer.sep_id)

    def one_ig():
        out = token_attributions.integrated_gradients_tensors(
            model, ids[:1], segments[:1], special, scorer.pad_id, steps=steps)
        return out["attributions"].numpy()

    train_seconds = median_seconds(lambda: forward_backward().numpy(), repeats)
    ig_seconds = median_seconds(one_ig, repeats)
    return {"fwd_bwd_batch32_seconds": train_seconds, "ig_seconds": ig_seconds,
            "ig_steps": steps, "ig_cost_in_fwd_bwd_32": ig_seconds / train_seconds,
            "repeats": repeats}


def format_cost_table(summary: dict, cost: dict) -> str:
    unit = cost["fwd_bwd_batch32_seconds"]
    lines = [f"{'method':<22}{'s/example':>12}{'x fwd+bwd(32)':>16}"]
    for group in ("methods", "history_methods"):
        for method, values in summary.get(group, {}).items():
            seconds = values.get("seconds_per_example")
            if seconds is not None:
                lines.append(f"{method:<22}{seconds:>12.4f}{seconds / unit:>16.2f}")
    lines.append(f"{'IG alone (compiled)':<22}{cost['ig_seconds']:>12.4f}"
                 f"{cost['ig_cost_in_fwd_bwd_32']:>16.2f}")
    lines.append(f"(one forward+backward pass on a batch of 32: {unit * 1000:.1f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explainers",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--num_examples", type=int, default=100)
    parser.add_argument("--methods", default="",
                        help="comma-separated (default: every method; shap if installed)")
    parser.add_argument("--ig_steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from trainer.responsible import explain_lib
    from trainer.io import write_json
    from trainer.errors import UserInputError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        methods = list(explainer_lib.TOKEN_METHODS + explainer_lib.HISTORY_METHODS)
        from bert_recommender.explainability.shap_attributions import require_shap
        try:
            require_shap()
        except ImportError:
            methods.remove("shap")
    try:
        _, summary, context = explain_lib.run_explanations(
            args.model_dir, num_examples=args.num_examples, methods=methods,
            seed=args.seed, ig_steps=args.ig_steps)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cost = measure_ig_cost(context["scorer"], context["cases"],
                           context["compose"], args.ig_steps,
                           args.repeats)
    summary["cost"] = cost
    print("\n" + explainer_lib.format_faithfulness_table(summary))
    print("\ncomprehensiveness beats random (non-overlapping 95% intervals):")
    for group in ("methods", "history_methods"):
        for method, values in summary[group].items():
            if "beats_random" in values:
                print(f"  {method:<22}{values['beats_random'].get('comprehensiveness')}")
    print("\n" + format_cost_table(summary, cost))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "explainers.json"), summary)
        print(f"\nwrote {os.path.join(args.out, 'explainers.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
