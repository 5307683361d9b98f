"""Command-line entry point:
``python -m trainer.task {train,tune,distill,prepare,evaluate,export,predict,recommend,explain,
audit}``.

    python -m trainer.task train --config configs/tiny.yaml --model_dir runs/tiny \\
        [--set train.learning_rate=3e-5 --set model.num_layers=1]
    python -m trainer.task tune --config configs/tiny.yaml --model_dir runs/tiny_tune \\
        [--set tune.max_trials=3 --set tune.algorithm=hyperband]
    python -m trainer.task train --config runs/tiny_tune/best_config.yaml --model_dir runs/best
    python -m trainer.task distill --teacher_dir runs/demo \
        --config configs/demo_student.yaml --model_dir runs/demo_student
    python -m trainer.task evaluate --model_dir runs/tiny
    python -m trainer.task predict --model_dir runs/tiny \\
        --user_text "i want to buy a new laptop ; acme wireless retro laptop new" \\
        --item_text "globex wireless gaming laptop pro"
    python -m trainer.task recommend --model_dir runs/demo --user_text "a laptop" \\
        --history item_12,item_7 --k 10
    python -m trainer.task recommend --pipeline configs/retrieve_rerank.yaml \\
        --user_text "a laptop" --history item_12,item_7
    python -m trainer.task explain --model_dir runs/tiny --num_examples 20 \
        [--methods integrated_gradients,occlusion,shapley]
    python -m trainer.task audit --model_dir runs/demo [--compare runs/demo_mf] [--k 10]

Parses arguments, loads the config and dispatches; the work lives in train_lib / export / explain_lib /
audit_lib.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

# Private training needs oneDNN off (trainer/training/privacy.py); the name is repeated here because
# this module must not import TensorFlow before setting it.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"

# TensorFlow's start-up lines on stderr (oneDNN, CUDA drivers, cuDNN/cuFFT/cuBLAS factories,
# CPU instructions, absl's "before InitializeLog"), hidden unless --verbose_backend: the level
# quiets TensorFlow's C++ logs, but the lines printed while TensorFlow starts (its import,
# the first look at devices) ignore it, so they are held back and dropped
# (_import_tensorflow_quietly).
# Neither changes what TensorFlow computes (oneDNN stays as it was).
LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
_STARTUP_LINE = re.compile(
    r"[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "  # absl: I0000 00:00:1796.9 391 port.cc:153]
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] "  # TensorFlow's own format
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|To enable the following instructions: ")  # the CPU-instructions line's second line

# The default methods (shap and lime are opt-in: shap needs the [explain] extra; both are slow).
EXPLAIN_METHODS = ("integrated_gradients", "gradient_x_input", "attention_rollout", "occlusion",
                   "leave_one_out", "shapley")


def _tolerance(text: str) -> float | None:
    """``--ig_tolerance``: a positive number, or ``none`` for fixed steps."""
    if text.strip().lower() == "none":
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or 'none', got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.task", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("train", "train, evaluate and export one experiment"),
                            ("tune", "hyperparameter search over the config's tune.space "
                             "(keras-tuner); writes best_config.yaml")):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("--config", required=True,
                             help="YAML config (see configs/; local, gs://, or a configs/ "
                             "path installed with the package)")
        command.add_argument("--model_dir", required=True, help="run directory (local or gs://)")
        command.add_argument("--set", dest="overrides", action="append", default=[],
                             metavar="KEY=VALUE", help="dotted override, repeatable")
    prepare = sub.add_parser("prepare", help="convert the config's data source once into "
                             "sharded TFRecords that train streams (data.tfrecord_dir)")
    prepare.add_argument("--config", required=True)
    prepare.add_argument("--out", required=True, help="an empty directory (local or gs://)")
    prepare.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE", help="dotted override, repeatable")
    distill = sub.add_parser("distill", help="train a student on a teacher run's logits "
                             "(trainer/training/distill_lib.py); writes distill_report.json")
    distill.add_argument("--teacher_dir", required=True, help="a finished run to learn from")
    distill.add_argument("--config", required=True,
                         help="the student's config (its data section must be the teacher's)")
    distill.add_argument("--model_dir", required=True, help="the student's run directory")
    distill.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE", help="dotted override, repeatable")
    evaluate = sub.add_parser("evaluate", help="re-evaluate a trained run")
    evaluate.add_argument("--model_dir", required=True)
    export = sub.add_parser("export", help="(re)write a finished run's SavedModels (export/, "
                            "export_tokens/) from its model.keras, under TensorFlow")
    export.add_argument("--model_dir", required=True)
    export.add_argument("--source_dir", default=None,
                        help="read model.keras and item_index/ from here instead (a JAX "
                        "run's staging directory)")
    predict = sub.add_parser("predict", help="score pairs with the exported SavedModel")
    predict.add_argument("--model_dir", required=True)
    predict.add_argument("--user_text", action="append", required=True,
                         help="user side text (repeat for a batch): 'query ; newest history "
                         "item ; ...'; for a two-tower run the first part is always the "
                         "query (leave it empty: ' ; item a ; item b')")
    predict.add_argument("--item_text", action="append", required=True,
                         help="candidate item text (repeat, same count as --user_text)")
    recommend = sub.add_parser("recommend", help="the top k catalogue items for a user "
                               "(two-tower runs: their saved item index; or retrieve -> "
                               "rerank with --pipeline)")
    stages = recommend.add_mutually_exclusive_group(required=True)
    stages.add_argument("--model_dir", help="a two-tower run: retrieval alone")
    stages.add_argument("--pipeline", help="a retrieve -> rerank YAML naming both runs "
                        "(see configs/retrieve_rerank.yaml)")
    recommend.add_argument("--set", dest="overrides", action="append", default=[],
                           metavar="KEY=VALUE", help="override a --pipeline key, repeatable "
                           "(e.g. rerank.model_dir=runs/demo_cross)")
    recommend.add_argument("--user_text", default="",
                           help="the user's query (empty: none)")
    recommend.add_argument("--history", default="",
                           help="comma-separated catalogue item ids the user interacted "
                           "with, most recent first; they are not recommended again")
    recommend.add_argument("--explain", action="store_true",
                           help="explain each recommended item (text models: which words "
                           "and history items drove its score, a verified counterfactual, "
                           "a sentence)")
    recommend.add_argument("--k", type=int, default=None,
                           help="items to return (default: 10, or the pipeline's k)")
    recommend.add_argument("--approximate", action="store_true",
                           help="--model_dir: candidates from an HNSW index (faiss-cpu and "
                           "numba, pip install -e '.[ann]'), rescored exactly; for large "
                           "catalogues. The graph is saved under RUN/item_index/ and read "
                           "back by later calls")
    # numpy and the error types only: the parser stays free of TensorFlow.
    # pylint: disable-next=import-outside-toplevel
    from trainer.serving.retrieval import ApproximateIndex
    recommend.add_argument("--ann_neighbours", type=int, default=None,
                           help="--approximate: HNSW's M, the graph's degree (default "
                           f"{ApproximateIndex.NEIGHBOURS}; 64 at a million items, "
                           "docs/benchmarks.md)")
    recommend.add_argument("--ann_ef", type=int, default=None,
                           help="--approximate: the search beam, efSearch (default "
                           f"{ApproximateIndex.EF_SEARCH})")
    audit = sub.add_parser("audit", help="popularity bias, item-group exposure against "
                           "merit and user-group gaps of a trained run, beside the "
                           "popularity baseline (trainer/responsible/audit_lib.py); writes audit/")
    audit.add_argument("--model_dir", required=True)
    audit.add_argument("--split", default="test", choices=("validation", "test"))
    audit.add_argument("--k", type=int, default=10, help="the top k of each ranking that "
                       "is exposed (exposure 0 below it)")
    audit.add_argument("--compare", action="append", default=[], metavar="RUN_DIR",
                       help="another finished run on the same data to audit alongside "
                       "(repeatable), e.g. an MF baseline")
    audit.add_argument("--merit", default="auto", choices=("auto", "true", "clicks",
                                                           "predicted"),
                       help="expected clicks per candidate: the data's true relevance "
                       "(synthetic), the logged clicks, or each scorer's own probabilities "
                       "(auto: true where recorded, else clicks)")
    audit.add_argument("--item_group", default="provider", choices=("provider", "category"),
                       help="item groups whose exposure is compared (items without a "
                       "provider fall back to their first category)")
    audit.add_argument("--user_column", default=None,
                       help="an impressions column grouping users (e.g. age_band), beside "
                       "the activity quartiles")
    audit.add_argument("--bootstrap", type=int, default=1000,
                       help="resamples of impressions for the 95%% intervals (the "
                       "simultaneous ones over groups need ~1000)")
    audit.add_argument("--seed", type=int, default=0)
    audit.add_argument("--catalogue", action="store_true",
                       help="rank the whole catalogue for each user (two-tower, SASRec, MF "
                       "runs) instead of the logged impressions; merit is the held-out clicks")
    audit.add_argument("--candidates", type=int, default=100,
                       help="--catalogue: each user's top n that the reranker reorders")
    audit.add_argument("--sweep", action="store_true",
                       help="draw the exposure-aware reranker's trade-off (nDCG@k against "
                       "APLT and exposure) over its weight, for --model_dir")
    explain = sub.add_parser("explain", help="explain a trained run's recommendations and "
                             "measure the explanations' faithfulness")
    explain.add_argument("--model_dir", required=True)
    explain.add_argument("--num_examples", type=int, default=20,
                         help="impressions to explain (one candidate each)")
    explain.add_argument("--methods", default=",".join(EXPLAIN_METHODS),
                         help="comma-separated; token methods: integrated_gradients, "
                         "gradient_x_input, attention_rollout, occlusion, shap (needs "
                         "the [explain] extra), lime; history methods: leave_one_out, "
                         "shapley")
    explain.add_argument("--split", default="test", choices=("validation", "test", "train"))
    explain.add_argument("--select", default="top", choices=("top", "random"),
                         help="top: each impression's top-scored candidate (the "
                         "recommendation); random: any candidate")
    explain.add_argument("--ig_steps", type=int, default=32,
                         help="integrated gradients' quadrature steps to start from")
    explain.add_argument("--ig_tolerance", type=_tolerance, default=0.01,
                         help="per example, the steps double while the completeness error is "
                              "above this (relative; 'none': fixed --ig_steps, no "
                              "convergence reported)")
    explain.add_argument("--ig_max_steps", type=int, default=512,
                         help="the most steps an example may double to; set it to --ig_steps "
                              "for fixed steps (convergence still reported)")
    explain.add_argument("--ig_baseline", default="pad", choices=("pad", "mask"),
                         help="integrated gradients' baseline: every word piece replaced by "
                         "the [PAD] or the [MASK] embedding")
    explain.add_argument("--shapley_permutations", type=int, default=32)
    explain.add_argument("--lime_samples", type=int, default=256,
                         help="LIME's neighbourhood per example (word masks scored, the "
                         "input included; with --methods ...,lime)")
    explain.add_argument("--seed", type=int, default=0)
    verbose_help = ("show TensorFlow's start-up and C++ log lines (oneDNN, CUDA, cuDNN, "
                    "CPU instructions); hidden by default, where TF_CPP_MIN_LOG_LEVEL is 2 "
                    "unless you set it (set to 0, it shows them too)")
    parser.add_argument("--verbose_backend", action="store_true", help=verbose_help)
    for command in sub.choices.values():  # also after the command (`explain ... --verbose_backend`)
        command.add_argument("--verbose_backend", action="store_true",
                             default=argparse.SUPPRESS, help=verbose_help)
    return parser


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow and lists its physical devices with what is written to stderr
    meanwhile held back, then passes that on without the start-up lines (_STARTUP_LINE); all
    of it if either step fails."""
    if "tensorflow" in sys.modules:
        return
    import tempfile  # pylint: disable=import-outside-toplevel

    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        failed = True
        try:
            import tensorflow as tf  # pylint: disable=import-outside-toplevel

            # Physical devices only (CUDA's "failed call to cuInit" on a machine without
            # one); the logical devices, which memory growth must precede, come later.
            tf.config.list_physical_devices()
            failed = False
        except Exception:  # pylint: disable=broad-except
            pass  # the command meets it again where it would have; all of stderr is shown
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if failed or not _STARTUP_LINE.match(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet = not args.verbose_backend and os.environ.get(LOG_LEVEL_VARIABLE) != "0"
    if quiet:
        os.environ.setdefault(LOG_LEVEL_VARIABLE, "2")  # before TensorFlow starts
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trainer import backend
    from trainer import config as config_lib
    from trainer.errors import UserInputError

    try:
        cfg = None
        if args.command in ("train", "tune", "distill", "prepare"):
            # Before anything imports Keras, whose backend is fixed at import.
            cfg = config_lib.load_config(args.config, args.overrides)
            backend.select(cfg.runtime.backend)
            if cfg.train.privacy.enabled:
                # Read once when TensorFlow starts: see trainer/training/privacy.py ONEDNN_VARIABLE.
                os.environ[ONEDNN_VARIABLE] = "0"
        elif args.command == "evaluate":
            backend.select("auto")
        else:
            # SavedModels, tf-text and TensorFlow gradients: these run under TensorFlow
            # whichever backend trained the run (model.keras is backend-neutral).
            backend.select("tensorflow")
        if quiet:  # after the backend and oneDNN choices, which TensorFlow reads at import
            _import_tensorflow_quietly()
        if args.command == "train":
            from trainer.training import train_lib
            results = train_lib.train(cfg, args.model_dir)
            if results:  # empty on the non-chief workers of a multi-worker run
                _report(args.model_dir, results, train_lib.format_metrics_table(results))
        elif args.command == "tune":
            from trainer.training import tune_lib
            results = tune_lib.tune(cfg, args.model_dir)
            print("\n" + tune_lib.format_trials_table(results))
            print(f"\nbest: trial {results['best']['trial_id']} "
                  f"({results['objective']}={results['best']['score']:.4f})\n"
                  f"outputs:\n  {results['best_config']}\n"
                  f"  {os.path.join(args.model_dir, 'tune_results.json')}\n"
                  f"  {os.path.join(args.model_dir, 'tensorboard')}   (HParams dashboard)\n"
                  f"train it:\n  python -m trainer.task train --config "
                  f"{results['best_config']} --model_dir RUN_DIR")
        elif args.command == "distill":
            from trainer.training import distill_lib
            report = distill_lib.distill(cfg, args.teacher_dir, args.model_dir)
            if report:
                print("\n" + distill_lib.report_table(report))
                print(f"\noutputs:\n  {os.path.join(args.model_dir, 'distill_report.json')}"
                      f"\n  {os.path.join(args.model_dir, 'metrics.json')}")
        elif args.command == "evaluate":
            from trainer.training import train_lib
            results = train_lib.evaluate(args.model_dir)
            print(train_lib.format_metrics_table(results))
            print(json.dumps(results, indent=2, sort_keys=True))
        elif args.command == "prepare":
            from trainer.data import prepare as prepare_lib
            manifest = prepare_lib.prepare(cfg, args.out)
            print(json.dumps({k: manifest[k] for k in ("counts", "users", "items",
                                                         "seconds", "examples_per_second")},
                             indent=2))
            print(f"\ntrain from it:\n  python -m trainer.task train --config {args.config} "
                  f"--set data.tfrecord_dir={args.out} --model_dir RUN_DIR")
        elif args.command == "export":
            from trainer.training import train_lib
            for path in train_lib.export_run(args.model_dir, args.source_dir):
                print(path)
        elif args.command == "audit":
            from trainer.responsible import audit_lib, audit_report
            report = audit_lib.audit(
                args.model_dir, split=args.split, k=args.k, compare=args.compare,
                merit=args.merit, item_group=args.item_group, user_column=args.user_column,
                bootstrap=args.bootstrap, seed=args.seed, catalogue=args.catalogue,
                candidates=args.candidates, sweep=args.sweep)
            print("\n" + audit_report.summary_table(report))
            out = os.path.join(args.model_dir, "audit")
            print(f"\noutputs:\n  {out}/report.html\n  {out}/audit.json")
        elif args.command == "explain":
            from bert_recommender.explainability.explainer import format_faithfulness_table
            from trainer.responsible import explain_lib
            summary = explain_lib.explain(
                args.model_dir, num_examples=args.num_examples,
                methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                split=args.split, select=args.select, seed=args.seed,
                ig_steps=args.ig_steps, ig_baseline=args.ig_baseline,
                shapley_permutations=args.shapley_permutations,
                lime_samples=args.lime_samples, ig_tolerance=args.ig_tolerance,
                ig_max_steps=args.ig_max_steps)
            print("\n" + format_faithfulness_table(summary))
            out = os.path.join(args.model_dir, "explanations")
            print(f"\noutputs:\n  {out}/report.html\n  {out}/explanations.jsonl\n"
                  f"  {out}/faithfulness.json")
        elif args.command == "recommend":
            from trainer.serving import recommend_lib
            history = [h.strip() for h in args.history.split(",") if h.strip()]
            ann = {"neighbours": args.ann_neighbours, "ef_search": args.ann_ef}
            ann = {name: value for name, value in ann.items() if value is not None}
            if ann and not args.approximate:
                raise UserInputError("--ann_neighbours / --ann_ef apply with --approximate "
                                     "only")
            if args.pipeline:
                if args.approximate:
                    raise UserInputError("--approximate applies to --model_dir only")
                pipeline = config_lib.load_pipeline(args.pipeline, args.overrides)
                recommender = recommend_lib.RetrieveRerank(pipeline)
                items = recommender.recommend([args.user_text], [history], k=args.k)[0]
                print("rank\titem_id\tclick_probability\tscore\trerank_logit\t"
                      "retrieval_logit")
                for rank, item in enumerate(items, 1):
                    print(f"{rank}\t{item['item_id']}\t{item['click_probability']:.4f}\t"
                          f"{item['score']:+.4f}\t{item['rerank_logit']:+.4f}\t"
                          f"{item['retrieval_logit']:+.4f}")
            else:
                if args.overrides:
                    raise UserInputError("--set applies to --pipeline only")
                recommender = recommend_lib.Recommender(args.model_dir, args.approximate,
                                                        **ann)
                items = recommender.recommend([args.user_text], [history],
                                              k=10 if args.k is None else args.k)[0]
                print("rank\titem_id\tclick_probability\tlogit")
                for rank, item in enumerate(items, 1):
                    print(f"{rank}\t{item['item_id']}\t{item['click_probability']:.4f}\t"
                          f"{item['logit']:+.4f}")
            if args.explain:
                records = recommender.explain(args.user_text, history,
                                              [item["item_id"] for item in items])
                print("\nwhy (the model's own scores, re-scored; see docs/explainability.md):")
                for rank, (item, record) in enumerate(zip(items, records), 1):
                    print(f"{rank}\t{item['item_id']}\t{record['sentence']}")
        elif args.command == "predict":
            if len(args.user_text) != len(args.item_text):
                raise UserInputError("give as many --item_text as --user_text")
            from trainer import runs
            from trainer.serving import export
            runs.verify(args.model_dir)  # a finished run whose export is whole
            export_dir = os.path.join(args.model_dir, runs.EXPORT_DIRS[0])
            import tensorflow as tf  # pylint: disable=import-outside-toplevel
            if not tf.io.gfile.exists(export_dir):
                raise UserInputError(
                    f"{export_dir} does not exist (the run was trained with "
                    "train.export=false): write it with `python -m trainer.task export "
                    f"--model_dir {args.model_dir}`, then predict again")
            out = export.predict_texts(export_dir, args.user_text, args.item_text)
            for user, item, p in zip(args.user_text, args.item_text,
                                     out["click_probability"].numpy()):
                print(f"{p:.4f}\t{user!r}\t{item!r}")
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _report(model_dir: str, results: dict, table: str) -> None:
    print("\n" + table)
    print(f"\ntrained in {results['train']['seconds']} s "
          f"({results['train']['epochs_run']} epochs x {results['train']['steps_per_epoch']} "
          f"steps, {results['train']['replicas']} replica(s))")
    print("\noutputs:")
    for name, what in (("config.yaml", "resolved config"), ("data_info.json", "data counts"),
                       ("data", "generated data files (synthetic source)"),
                       ("vocab.txt", "WordPiece vocabulary"),
                       ("tensorboard", "TensorBoard: scalars, PR curves, histograms, text, "
                        "projector"),
                       ("calibration.png", "reliability diagram (validation)"),
                       ("score_histogram.png", "predicted probability by label (validation)"),
                       ("checkpoints", "best weights by train.early_stopping_metric"),
                       ("model.keras", "Keras model"),
                       ("export", "SavedModel (serving_default on raw strings)"),
                       ("item_index", "catalogue item vectors for `recommend` (two-tower)"),
                       ("metrics.json", "validation/test metrics"),
                       ("manifest.json", "the run's files, sizes and checksums (trainer/runs.py)")):
        path = os.path.join(model_dir, name)
        if os.path.exists(path) or "://" in model_dir:
            print(f"  {path:<48} {what}")


if __name__ == "__main__":
    sys.exit(main())
