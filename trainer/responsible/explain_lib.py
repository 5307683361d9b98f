"""``python -m trainer.task explain``: explain a trained run's recommendations.

Loads the run (config, ``model.keras``, vocabulary, data), picks impressions from a split,
explains one candidate of each with :mod:`bert_recommender.explainability`, and writes::

    <model_dir>/explanations/
        report.html          one self-contained page: heatmaps, history bars, sentences
        explanations.jsonl   one record per explained example
        faithfulness.json    per method: faithfulness with bootstrap 95% intervals, cost
    <model_dir>/tensorboard/explanations/   text summaries (sentences, the faithfulness table)

Everything is validated before anything is written; the three files are written into a
temporary directory that is renamed into place, so an interrupted run leaves no
half-written ``explanations/``.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from bert_recommender.explainability import explainer as explainer_lib
from bert_recommender.explainability import token_attributions
from bert_recommender.explainability.history_attributions import Case
from bert_recommender.explainability.pair_scorer import PairScorer
from bert_recommender.explainability.report import render_report
from trainer import backend, runs
from trainer.kind_registry import names_with
from trainer.kinds.text import user_side_composer
from trainer.io import atomic_directory, atomic_write_text, write_json
from trainer.errors import DataError, RunDirError, UserInputError
from trainer.progress import Progress

SELECTIONS = ("top", "random")


def open_text_run(model_dir: str) -> runs.Run:
    """The finished run at ``model_dir`` (trainer/runs.py), refused unless its kind reads
    text (a cross-encoder or a two-tower model)."""
    run = runs.open_run(model_dir)
    if not run.kind.explains_words:
        raise UserInputError(f"{model_dir}: explain needs a text model (model.kind="
                             f"{' / '.join(names_with('explains_words'))}); this run trained model.kind="
                             f"{run.cfg.model.kind}, which reads no words to explain")
    return run


def make_compose(max_history: int):
    """The cross-encoder's user-side formatting for a list of shown titles (oldest first)."""
    return user_side_composer(max_history)


def make_case(example, impression: list, catalogue, cfg, index: int,
              history_item_text: bool = False) -> Case:
    """A :class:`Case` for ``example`` with the other candidates of its impression.
    ``history_item_text``: the model reads each history item's full text
    (``data.item_text_fields``, as a two-tower model does), not its title alone."""
    shown = list(example.history)[-cfg.data.max_history:] if cfg.data.max_history > 0 else []
    fields = cfg.data.item_text_fields
    truth = {}
    if "true_reason_tokens" in example.extras:
        truth = {"reason_tokens": example.extras.get("true_reason_tokens"),
                 "reason_history": example.extras.get("true_reason_history")}
    return Case(
        query=example.query or "",
        history=[(h, catalogue[h].title) for h in shown],
        candidate_id=example.candidate,
        candidate_text=catalogue[example.candidate].text(fields),
        candidate_title=catalogue[example.candidate].title,
        others=[(o.candidate, catalogue[o.candidate].text(fields))
                for o in impression if o is not example],
        meta={"example": {"index": index, "impression_id": example.impression_id,
                          "user_id": example.user_id, "label": int(example.label)},
              "truth": truth},
        history_texts=[catalogue[h].text(fields) for h in shown] if history_item_text
        else None)


def select_cases(examples: list, catalogue, cfg, scorer: PairScorer, num_examples: int,
                 select: str, seed: int, compose=None) -> list[Case]:
    """``num_examples`` impressions drawn at random (seeded) from ``examples``; from each,
    its top-scored candidate (``select="top"``: the recommendation) or a random one."""
    impressions: dict = {}
    for index, example in enumerate(examples):
        impressions.setdefault(example.impression_id, []).append((index, example))
    rng = np.random.default_rng(seed)
    keys = sorted(impressions)
    chosen = [keys[i] for i in rng.permutation(len(keys))[:num_examples]]
    compose = compose or make_compose(cfg.data.max_history)
    history_item_text = getattr(scorer, "history_reads_item_text", False)
    cases = []
    for key in chosen:
        rows = impressions[key]
        members = [ex for _, ex in rows]
        candidates = [make_case(ex, members, catalogue, cfg, i, history_item_text)
                      for i, ex in rows]
        if select == "top":
            scorer.bind(candidates[0])  # the impression's item ids (two-tower scorer)
            scores = scorer.score_texts([c.user_text(compose) for c in candidates],
                                        [c.candidate_text for c in candidates])
            cases.append(candidates[int(np.argmax(scores))])
        else:
            cases.append(candidates[int(rng.integers(len(rows)))])
    return cases


def run_explanations(model_dir: str, num_examples: int = 20, methods: list | None = None,
                     split: str = "test", select: str = "top", seed: int = 0,
                     ig_steps: int = 32, shapley_permutations: int = 32,
                     progress: bool = True, ig_baseline: str = "pad",
                     lime_samples: int = 256,
                     ig_tolerance: float | None = token_attributions.DEFAULT_TOLERANCE,
                     ig_max_steps: int = token_attributions.DEFAULT_MAX_STEPS,
                     ) -> tuple[list, dict, dict]:
    """Explains ``num_examples`` recommendations of the run in ``model_dir``; writes nothing.

    Integrated gradients start at ``ig_steps`` and double per example while the
    completeness error is above ``ig_tolerance``, up to ``ig_max_steps``
    (``ig_max_steps=ig_steps`` keeps them fixed; see ``ExplainOptions``).

    Returns ``(records, faithfulness summary, context)`` where ``context`` holds the loaded
    ``cfg``, ``scorer`` and ``cases`` (the benchmark times methods on them).
    """
    if num_examples < 1:
        raise UserInputError(f"--num_examples must be at least 1, got {num_examples}")
    if select not in SELECTIONS:
        raise UserInputError(f"--select must be one of {SELECTIONS}, got {select!r}")
    try:
        options = explainer_lib.ExplainOptions(
            methods=tuple(methods or explainer_lib.DEFAULT_METHODS), ig_steps=ig_steps,
            ig_baseline=ig_baseline, shapley_permutations=shapley_permutations,
            lime_samples=lime_samples, seed=seed, ig_tolerance=ig_tolerance,
            ig_max_steps=ig_max_steps)
    except ValueError as err:
        flag = "--" + str(err).split()[0] if str(err).startswith("ig_") else "--methods"
        raise UserInputError(f"{flag}: {err}") from None
    if "shap" in options.methods:
        from bert_recommender.explainability.shap_attributions import require_shap
        try:
            require_shap()
        except ImportError as err:
            raise UserInputError(f"--methods shap: {err}") from None
    run = open_text_run(model_dir)
    prepared = run.prepared()
    cfg = run.cfg
    if split not in prepared.splits or not prepared.splits[split]:
        raise DataError(f"the {split} split of {model_dir} is empty; choose another --split")
    scorer, compose = run.kind.explanation_scorer(cfg, run.model, run.featurizer)
    explainer = explainer_lib.Explainer(scorer, compose, options)
    cases = select_cases(prepared.splits[split], prepared.catalogue, cfg, scorer,
                         num_examples, select, seed, compose)

    # One untimed pass first, so no method's seconds_per_example includes graph tracing.
    explainer.explain(cases[0], cases[0].meta["example"]["index"])
    records, token_rows, history_rows = [], [], []
    # A live bar on a terminal, plain lines in a log (trainer/progress.py).
    bar = Progress(len(cases), unit="example", label="explain") if progress else None
    for case in cases:
        record, tokens, history = explainer.explain(case, case.meta["example"]["index"])
        records.append(record)
        token_rows.append(tokens)
        history_rows.append(history)
        if bar:
            bar.advance()
    summary = explainer_lib.summarize_faithfulness(token_rows, history_rows, seed=seed,
                                                   target=scorer.target)
    summary.update({"split": split, "select": select, "seed": seed, "ig_steps": ig_steps,
                    "ig_baseline": ig_baseline, "shapley_permutations": shapley_permutations,
                    "lime_samples": lime_samples, "ig_tolerance": ig_tolerance,
                    "ig_max_steps": ig_max_steps})
    not_applicable = {m: r for m, r in scorer.not_applicable.items() if m in options.methods}
    if not_applicable:
        summary["not_applicable"] = not_applicable
    return records, summary, {"cfg": cfg, "scorer": scorer, "cases": cases,
                              "compose": compose}


def explain(model_dir: str, **kwargs) -> dict:
    """:func:`run_explanations`, then writes the outputs listed in the module docstring.
    Returns the faithfulness.json content.

    Gradient attributions are TensorFlow's (``tf.GradientTape`` in the graph); a process
    running Keras under JAX (a TPU notebook) gets them from the ``explain`` command in a
    TensorFlow child process, which reads the same run directory."""
    if keras.backend.backend() != "tensorflow":
        command = ["explain", "--model_dir", model_dir]
        for key, value in kwargs.items():
            if key == "ig_tolerance" and value is None:
                value = "none"  # fixed steps; dropping it would give the child's default
            if value is not None:
                value = ",".join(value) if key == "methods" else value
                command += [f"--{key}", str(value)]
        backend.run_in_tensorflow(command)
        with tf.io.gfile.GFile(os.path.join(model_dir, "explanations",
                                            "faithfulness.json")) as f:
            return json.load(f)
    records, summary, _ = run_explanations(model_dir, **kwargs)
    _write_outputs(model_dir, records, summary)
    _write_tensorboard(model_dir, records, summary)
    return summary


def _write_outputs(model_dir: str, records: list, summary: dict) -> str:
    final = os.path.join(model_dir, "explanations")
    with atomic_directory(final) as tmp:
        atomic_write_text(os.path.join(tmp, "explanations.jsonl"),
                          "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        write_json(os.path.join(tmp, "faithfulness.json"), summary)
        atomic_write_text(os.path.join(tmp, "report.html"), render_report(
            records, summary, title=f"Explanations: {os.path.basename(model_dir.rstrip('/'))}"))
    return final


def read_explanations(model_dir: str) -> list[dict]:
    """The records ``explain`` wrote to ``<model_dir>/explanations/explanations.jsonl``, one
    dict per explained recommendation (``sentence``, attributions, counterfactual, ...)."""
    path = os.path.join(model_dir, "explanations", "explanations.jsonl")
    if not tf.io.gfile.exists(path):
        raise RunDirError(f"{path}: not found; run `python -m trainer.task explain "
                          f"--model_dir {model_dir}` first")
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_tensorboard(model_dir: str, records: list, summary: dict) -> None:
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard",
                                                        "explanations"))
    with writer.as_default():
        tf.summary.text("faithfulness", explainer_lib.format_faithfulness_table(
            summary, markdown=True), step=0)
        for step, record in enumerate(records[:20]):
            tf.summary.text("explanation", record["sentence"], step=step)
    writer.flush()
