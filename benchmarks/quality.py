"""Ranking quality on MovieLens and the sequential benchmarks: popularity, MF, SASRec,
GRU4Rec, two-tower and cross-encoder BERT, one protocol.

    python -m benchmarks.quality --dataset scientific --data_dir PATH/amazon-scientific \\
        --out runs/quality_scientific --models popularity,sasrec,frozen_text_ids \\
        --pretrained PATH/all-MiniLM-L6-v2 [--ensemble sasrec+frozen_text_ids]
    python -m benchmarks.quality --dataset movielens --data_dir ../shared/data/ml-latest-small \\
        --out runs/quality [--config configs/movielens.yaml] [--set train.epochs=2 ...] \\
        [--models popularity,mf,sasrec,two_tower,bert,bert_rerank] [--bootstrap 1000] \\
        [--rerank_candidates 100 --rerank_train_positives 20000 --rerank_hard_negatives 2] \\
        [--set_for mf:train.epochs=30 ...] [--full_ranking_pairwise_users 25] \\
        [--pretrained ../shared/models/all-MiniLM-L6-v2 --pretrained_eval_users 50]

Rows (``--models``; each is the base config with the row's model settings, see
:func:`row_overrides`): one per registered model kind that declares ``benchmark_overrides``
(trainer/kinds/), named after it -- ``popularity`` (training click counts), ``mf`` (matrix
factorisation, with the tuned ``DEFAULT_SET_FOR`` settings), ``item_knn`` (item-to-item
neighbours counted from the training sequences, nothing trained), ``sasrec`` (the two-tower
model over item ids alone), ``two_tower`` (``model.item_ids=true``: shared text item
encoder + item ids) -- and the cross-encoder's variants: ``bert`` (random init),
``bert_rerank`` (the same, trained on the two-tower's retrieved negatives:
see retrieve -> rerank below) and ``bert_pretrained`` (the cross-encoder from
``--pretrained``).

Protocol (identical for every model, so the rows differ only in the model):

* The data is loaded and turned into pair tables once, with one id vocabulary and one
  WordPiece vocabulary, by ``trainer.training.train_lib.prepare_data`` (what ``train`` uses).
* Split: chronological leave-last-out per user (trainer/data/movielens.py): each user's
  last positive (rating >= ``data.movielens.positive_threshold``) is the test item, the one
  before it the validation item, earlier positives are training impressions with
  ``negatives_per_positive`` sampled negatives.
* Every model is built by ``train_lib.build_model`` and fitted by ``train_lib.fit_model``
  (the routine ``train`` uses: AdamW with warmup/decay, early stopping on the config's
  ``train.early_stopping_metric`` of the validation impressions -- per-user nDCG@10 in
  configs/movielens.yaml -- restoring the best weights). The loss is the config's
  ``train.loss`` (the in-batch softmax in configs/movielens.yaml: the training positives,
  each batch's other candidates as negatives) for the two-tower rows; models without
  separate user and item vectors (MF, the cross-encoder) train with BCE on the training
  impressions (``POINTWISE``). Popularity and item_knn have no trainable weights: they are
  only counted.
* Test: each user's impression is the held-out positive plus ``data.movielens.eval_negatives``
  items the user never rated, sampled uniformly with a seed (the same candidates for every
  model). Scores are reshaped to ``[users, 1 + negatives]`` and ranked per user with
  ``trainer.evaluation.metrics.sampled_ranking_metrics``: HR@10, nDCG@10, MRR and the per-user AUC; a
  negative tied with the positive counts as ranked above it (a constant scorer gets the worst
  rank). A row reports the mean over users and a 95% percentile bootstrap interval over users
  (``trainer.evaluation.metrics.bootstrap_ci``, same seed for every row, so rows are resampled alike).
* ``train_seconds`` covers build + fit (including validation each epoch); ``score_seconds``
  is ``predict`` over the scored test rows (including its first-call tracing).
* ``time_to_quality`` (every trained row, RecBole's too): seconds from the row's start to
  the end of its best validation epoch (the weights it keeps) and in all, median seconds
  per epoch with and without validation, training examples/s, and the validation curve;
  ``time_to_quality.png`` draws every row's curve against wall-clock seconds.

Full ranking (every row's ``full_ranking``), because sampled metrics can reorder models
(Krichene & Rendle, KDD 2020): each scored user's held-out positive is ranked against *every*
catalogue item the user never rated -- no rating at all, in any split (the rated sets come
from the loader's own ``movielens.read_movielens`` + ``prepare``) -- with no sampling, by
``trainer.evaluation.metrics.full_ranking_metrics``: HR@10, nDCG@10, MRR and HR@100 (with one
held-out item, recall@100: what a retrieval stage hands a reranker), the same pessimistic ties
and bootstrap. The logits come from the model kind's ``catalogue_logits``
(trainer/kinds/): popularity, MF and item_knn read their weights, ``sasrec`` / ``two_tower``
score one user state against the catalogue's item vectors computed once. A cross-encoder
has no such shortcut: it scores every (user, item) pair (~N forward passes a user), so the
cross-encoder rows are ranked on a seeded subset of ``--full_ranking_pairwise_users`` users
(drawn from bert_pretrained's users when those are a subset) and carry
``full_ranking.comparison_on_subset``: every row's full-ranking metrics on those users.
``bert_pretrained`` is fully ranked only on request (``--full_ranking_pretrained_users N``,
a seeded subset of those users): at ~20-30 pairs/s on 2 CPU cores a pretrained model takes
minutes per user; otherwise its ``full_ranking`` holds ``skipped``.
``full_ranking.max_abs_logit_diff_vs_sampled`` checks the catalogue logits against the
pairwise ``predict`` logits on the sampled candidates (it should be ~1e-6).

The sequential benchmarks (``--dataset sequences``, any directory of RecBole atomic files:
trainer/data/sequences.py; ``--dataset scientific``, the same with the Amazon Scientific
files' prefix and by default configs/scientific.yaml, the tuned recipe, with its per-row
settings ``RECIPE_SET_FOR``; ``sequences`` defaults to configs/sequences.yaml, or pass
``--config configs/scientific.yaml``) keep everything above but the split
and the exclusions, which follow the published figures on those files: the split is the
files' own (leave-one-out), and full ranking ranks each test target against every item,
the user's history included (RecBole's full-sort evaluation of a sequential model masks
only its padding id; UniSRec, VQ-Rec and MISSRec evaluate through it), with early stopping
on that full ranking of the validation targets (``train.early_stopping_metric:
full_ndcg@10``). Recall@k is HR@k (one target per user); full ranking reports k = 10, 50
and 100. Where the files are ones with published figures (:data:`PUBLISHED`), those are
printed beside the rows, labelled as published.

Retrieve -> rerank (every cross-encoder row's ``retrieve_rerank``, with
``--rerank_candidates N``, default 100, 0 = off): the ``two_tower`` row retrieves each
user's top N never-rated items from its catalogue logits (as in full ranking: the held-out
item competes with every unrated item), and each cross-encoder row scores those N pairs
(``ModelKind.candidate_logits``, what ``recommend --pipeline`` runs). Per user, HR@10 and
nDCG@10 of the held-out item are computed within the reranked list (not retrieved = a
miss, ties against it) for retrieval alone, the reranker alone and the fusion
``rerank logit + w * retrieval logit`` with w in ``FUSION_WEIGHTS`` chosen by the
validation users' nDCG@10 (their validation item retrieved the same way); each gets a 95%
bootstrap interval and a paired bootstrap interval of its difference with retrieval alone,
and the seconds per user of each stage. ``bert`` is the cross-encoder trained on uniform
negatives; ``bert_rerank`` is the same model trained as a second stage: a seeded subset of
``--rerank_train_positives`` training impressions in which ``--rerank_hard_negatives`` of
each positive's negatives are drawn from the retriever's top N for that training state.

``bert_pretrained`` (only with ``--pretrained``): the same BERTRecommender with a pretrained
backbone and its own tokenizer. A pretrained model is slow on a CPU, so it may train on a
seeded subset of whole training impressions (``--pretrained_train_examples``) and be scored on
a seeded subset of users (``--pretrained_eval_users``; its validation uses the same users).
The other rows are always scored on all users; when the subset is used the pretrained row
also carries ``comparison_on_subset``: every other model's metrics on exactly those users,
which is the comparison to read. By default it trains for 1 epoch at learning rate 3e-5
(``PRETRAINED_OVERRIDES``); change that with ``--set_for bert_pretrained:train.epochs=2``.

``frozen_text`` and ``frozen_text_ids`` (only with ``--pretrained``): the two-tower model
over the checkpoint's *frozen* vectors of the item texts (``model.kind: frozen_two_tower``),
text alone and text + item ids. The texts are encoded once into ``--out/text_vectors/``
(reused by both rows and by a later run on the same files); each row records
``text_encoding_seconds`` beside its ``train_seconds``, and both are scored on all users.

``recbole_sasrec`` and ``recbole_gru4rec`` (only when named in ``--models``): RecBole's
SASRec and GRU4Rec (RecBole 1.2.1, its documented defaults, a learning-rate search on
validation NDCG@10) in their own virtual environment (``--recbole_venv``, made on first
use) and process, trained on this run's split written as RecBole benchmark files (the
sequential benchmarks' files linked as they are); their catalogue scores for the test users
come back through the same metric code, candidates, ties and bootstrap, and RecBole's own
evaluator's figures sit beside them (``recbole_reported``). See benchmarks/recbole_peer.py.

MF settings: ``DEFAULT_SET_FOR`` (below, with the measurements behind it) applies before
any ``--set_for``, so ``--set_for mf:KEY=VALUE`` overrides it; a row's ``overrides`` lists
both.

Outputs in ``--out``: ``quality.json`` ({"protocol": {...}, "rows": [...]}), ``data_info.json``
(what the loader read and skipped), ``config.yaml`` (the resolved base config) and
``time_to_quality.png``. While the run goes on, ``quality.partial.json`` holds the rows
finished so far with their paired differences (rewritten after each row, deleted once
``quality.json`` is written), so a long run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import logging
import math
import os
import sys
import time

import numpy as np

from benchmarks import recbole_peer
from trainer import config as config_lib
from trainer.evaluation import metrics
from trainer.errors import ConfigError, DataError, UserInputError

# TensorFlow (train_lib, datasets) is imported inside run(), after the arguments are checked,
# so --help and usage errors answer at once.

# Retrieve -> rerank: the two_tower row retrieves each user's top --rerank_candidates items
# from the whole catalogue, and every cross-encoder row reranks them (``retrieve_rerank``).
RETRIEVER = "two_tower"
# (bert_pretrained is not one: at ~20-30 pairs/s on 2 CPU cores, 2 x 100 pairs for each of
# ~600 users would take over an hour.)
RERANKERS = ("bert", "bert_rerank")
RERANK_METRICS = ("hr@10", "ndcg@10")
# Fusion weights w of ``rerank logit + w * retrieval logit``, chosen on validation users.
FUSION_WEIGHTS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
METRICS = ("hr@10", "ndcg@10", "mrr", "auc")
# One held-out positive per user, so HR@k of full ranking is its recall@k: hr@100 is
# the recall@100 a retrieval stage would pass on to a reranker.
# @50 as the sequential benchmarks publish it (UniSRec, VQ-Rec: Recall and NDCG@10/50).
FULL_METRICS = ("hr@10", "ndcg@10", "hr@50", "ndcg@50", "mrr", "hr@100")
FULL_KS = (10, 50, 100)
# The finished rows of a run still going (or stopped): see _write_partial.
PARTIAL_FILE = "quality.partial.json"
KS = (10,)
_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# --dataset -> (data.source, default --config, data.sequences.name). "scientific" is the
# Amazon "Industrial and Scientific" benchmark as UniSRec released it.
DATASETS = {
    "movielens": ("movielens", os.path.join(_CONFIGS, "movielens.yaml"), None),
    "sequences": ("sequences", os.path.join(_CONFIGS, "sequences.yaml"), None),
    "scientific": ("sequences", os.path.join(_CONFIGS, "scientific.yaml"), "Scientific"),
}
DEFAULT_CONFIG = DATASETS["movielens"][1]
# Published full-ranking figures on the same files (leave-one-out as the files define,
# every item ranked, no history masked, early stopping on validation NDCG@10), by the
# files' name. Printed beside the rows, labelled as published; never computed here.
PUBLISHED = {
    "Scientific": [
        # (model, what it reads, R@10, N@10, R@50, N@50, source)
        ("SASRec", "ids", 0.1080, 0.0553, 0.2042, 0.0760, "UniSRec, KDD 2022, Table 2"),
        ("FDSA", "ids + text", 0.0899, 0.0580, 0.1732, 0.0759, "UniSRec, KDD 2022, Table 2"),
        ("UniSRec (inductive)", "text", 0.1188, 0.0641, 0.2394, 0.0903,
         "UniSRec, KDD 2022, Table 2"),
        ("UniSRec", "text + ids", 0.1235, 0.0634, 0.2473, 0.0904,
         "UniSRec, KDD 2022, Table 2"),
        ("VQ-Rec", "text (codes)", 0.1211, 0.0643, 0.2369, 0.0897,
         "VQ-Rec, WWW 2023, Table 2"),
        ("MISSRec", "text + images + ids", 0.1360, 0.0753, 0.2431, 0.0983,
         "MISSRec, ACM MM 2023, repository README"),
    ],
}
# Fine-tuning a pretrained backbone wants a small learning rate; one epoch keeps a CPU run short.
PRETRAINED_OVERRIDES = ["train.epochs=1", "train.learning_rate=3e-5"]
# What makes each row that model (applied after --set, before DEFAULT_SET_FOR / --set_for).
# Rows without separate user and item vectors cannot use the in-batch softmax, so they
# train pointwise (BCE on the sampled negatives) whatever the base config's train.loss.
POINTWISE = ["train.loss=bce"]
# keras-hub's post-LN BertBackbone (tanh-GELU): what a pretrained checkpoint is, and what
# the random-init cross-encoder rows were measured with; configs/movielens.yaml gives its
# two-tower a pre-LN ReLU encoder instead (model.normalize_first, model.activation).
KERAS_HUB_BLOCKS = ["model.normalize_first=false", "model.activation=gelu"]
# Every registered kind with ``benchmark_overrides`` (trainer/kinds/) gets a row of its name
# (:func:`row_overrides`); these are the cross-encoder's rows, variants of one kind.
VARIANT_ROWS = {
    # The random-init cross-encoder with the [CLS] pooler it was measured with (README:
    # nDCG@10 0.303 with 2 layers, when configs/movielens.yaml still had 2) before the
    # two-tower model became that config's default; the sizes follow the config, the
    # compute is capped in DEFAULT_SET_FOR.
    "bert": ["model.kind=cross_encoder", "model.pretrained=''", "model.pooling=cls"]
    + KERAS_HUB_BLOCKS + POINTWISE,
    # The same cross-encoder trained as a second stage: part of each training positive's
    # negatives come from the two_tower row's top --rerank_candidates for that user state
    # (--rerank_hard_negatives), the rest stay uniform.
    "bert_rerank": ["model.kind=cross_encoder", "model.pretrained=''", "model.pooling=cls"]
    + KERAS_HUB_BLOCKS + POINTWISE,
    "bert_pretrained": ["model.kind=cross_encoder"] + KERAS_HUB_BLOCKS + POINTWISE,
    # The two-tower model over the --pretrained checkpoint's frozen vectors of the item
    # texts (encoded once into --out/text_vectors, shared by both rows) through the
    # adapter: text alone (items scored from their text, so cold-start items too), and
    # text + item ids.
    "frozen_text": ["model.kind=frozen_two_tower", "model.item_ids=false"] + KERAS_HUB_BLOCKS,
    "frozen_text_ids": ["model.kind=frozen_two_tower", "model.item_ids=true"]
    + KERAS_HUB_BLOCKS,
}
DEFAULT_VARIANTS = ("bert", "bert_rerank")  # the PRETRAINED_ROWS join them with --pretrained
# Rows that read the --pretrained checkpoint.
PRETRAINED_ROWS = ("bert_pretrained", "frozen_text", "frozen_text_ids")


@functools.cache
def row_overrides() -> dict:
    """Row name -> the ``--set`` overrides that make the base config that row's model: one
    row per registered kind with ``benchmark_overrides`` (its name, registry order), then
    :data:`VARIANT_ROWS`. Imports the kinds' modules (TensorFlow)."""
    from trainer import kinds

    out = {}
    for name in kinds.names():
        kind = kinds.kind_class(name)
        if kind.benchmark_overrides is not None:
            out[name] = ([f"model.kind={name}", *kind.benchmark_overrides]
                         + ([] if kind.separate_towers else POINTWISE))
    return {**out, **VARIANT_ROWS}


def default_models() -> list:
    return [name for name in row_overrides()
            if name not in VARIANT_ROWS] + list(DEFAULT_VARIANTS)


def row_kind(name: str) -> str:
    """The ``model.kind`` a row trains."""
    return next(o.split("=", 1)[1] for o in row_overrides()[name]
                if o.startswith("model.kind="))


def learns_vocabulary(name: str) -> bool:
    """Whether a row reads text through the base config's learned WordPiece vocabulary (a
    random-init text kind)."""
    from trainer import kinds

    return (kinds.kind_class(row_kind(name)).uses_text
            and "model.pretrained=''" in row_overrides()[name])
# Per-row defaults that --set_for extends (later overrides win); recorded in the row.
# MF, tuned on ml-latest-small with this protocol (configs/movielens.yaml: 50,000-example
# training subset, 4 uniform negatives per positive; 608 users; sampled nDCG@10 [95% CI] /
# full-ranking nDCG@10 [95% CI]; popularity: 0.350 [0.320, 0.379] / 0.024 [0.014, 0.033]):
#   base config (3 epochs, lr 1e-3, dim 32, l2 0)      0.347 [0.318, 0.374] / 0.020 [0.012, 0.030]
#   20 epochs, lr 1e-2, l2 0, weight_decay 0 (stops at 4) 0.332 [0.304, 0.360] / 0.019
#   20 epochs, lr 1e-2, l2 1e-5                          0.382 [0.352, 0.413] / 0.021
#   30 epochs, lr 3e-3, l2 1e-5                          0.386 [0.356, 0.416] / 0.027
#   30 epochs, lr 3e-3, l2 1e-4                          0.370 [0.341, 0.399] / 0.026
#   30 epochs, lr 3e-3, l2 1e-5, dim 64  (chosen)        0.394 [0.365, 0.425] / 0.029 [0.019, 0.039]
#     the same, train.seed=7                             0.392 [0.361, 0.424] / 0.027
#   30 epochs, lr 3e-3, l2 1e-5, dim 128                 0.393 [0.364, 0.425] / 0.027 (3x slower)
# Without l2 the user/item vectors overfit within 2-4 epochs (early stopping ends the run);
# l2 regularises the embedding tables (models/baselines.py). It trains ~16 epochs (~85 s on
# 2 shared cores). Full ranking is within the intervals of popularity: the catalogue's
# 9.7k items are dominated by popularity, which MF learns only from the 50k subset.
# On all ~237k impressions (configs/movielens.yaml since the sequence recipe; popularity
# 0.381 [0.353, 0.411] / 0.025) the chosen settings give 0.453 [0.423, 0.484] / 0.029
# [0.019, 0.040], stopping at 10 epochs, with early stopping on AUC or on nDCG@10 alike.
# The cross-encoder's compute is capped at what it had when the config trained on a
# 50,000-example subset (3 epochs of 781 steps at batch 64): every (user, item) pair is a
# full forward pass, and the whole training set at that rate would take most of the
# benchmark's 45-minute budget.
DEFAULT_SET_FOR = {"mf": ["train.epochs=30", "train.learning_rate=3e-3", "model.l2=1e-5",
                          "model.embedding_dim=64", "train.batch_size=64"],
                   "bert": ["train.batch_size=64", "train.epochs=3",
                            "train.steps_per_epoch=781"],
                   "bert_rerank": ["train.batch_size=64", "train.epochs=3",
                                   "train.steps_per_epoch=781"]}


# Per-row settings that belong to a config's recipe (applied after DEFAULT_SET_FOR, before
# --set_for, whenever --config resolves to that file). configs/scientific.yaml's, measured
# on Amazon Scientific at width 128 (docs/benchmarks.md): cross-entropy over all 4,385
# items for the rows with cached item vectors and no text tower to run per item; the frozen
# rows read MiniLM's mean-pooled vectors through UniSRec's mixture of whitening experts;
# dropout 0.3 for frozen_text_ids, which overfits from its 5th epoch at 0.1 (test NDCG@10
# 0.0643 against 0.0638: within the intervals, kept for the steadier validation curve).
_FROZEN_RECIPE = ["train.loss=full_softmax", "model.adapter=moe", "model.pooling=mean"]
RECIPE_SET_FOR = {
    os.path.join(_CONFIGS, "scientific.yaml"): {
        "sasrec": ["train.loss=full_softmax"],
        "frozen_text": list(_FROZEN_RECIPE),
        "frozen_text_ids": _FROZEN_RECIPE + ["model.dropout=0.3"],
    },
}


# ---------------------------------------------------------------------------------------
# Pure helpers (numpy only)
# ---------------------------------------------------------------------------------------

def user_matrix(logits, labels, groups):
    """Per-impression scores as a ``[num_impressions, 1 + N]`` matrix, positive in column 0.

    Rows of an impression need not be contiguous; impressions come out sorted by group id
    and the negatives keep their input order. Every impression must have exactly one
    positive and the same number of rows (ValueError otherwise).

    Returns ``(scores, group_ids)``.

    >>> s, g = user_matrix([0.1, 0.9, 0.5, 0.7], [0, 1, 1, 0], [5, 5, 3, 3])
    >>> s.tolist(), g.tolist()
    ([[0.5, 0.7], [0.9, 0.1]], [3, 5])
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if not len(logits) == len(labels) == len(groups):
        raise ValueError(f"logits, labels and groups differ in length: {len(logits)}, "
                         f"{len(labels)}, {len(groups)}")
    if len(logits) == 0:
        return np.zeros([0, 0]), groups[:0]
    # lexsort is stable: by group, the positive first, then the negatives in input order.
    order = np.lexsort((-(labels > 0).astype(np.int64), groups))
    ids, starts, counts = np.unique(groups[order], return_index=True, return_counts=True)
    if len(set(counts.tolist())) != 1:
        raise ValueError(f"impressions differ in size ({sorted(set(counts.tolist()))}); "
                         "every user needs 1 positive + the same number of negatives")
    positives = np.add.reduceat((labels[order] > 0).astype(np.int64), starts)
    if not (positives == 1).all():
        bad = ids[positives != 1][:5].tolist()
        raise ValueError(f"impressions {bad} do not have exactly one positive")
    return logits[order].reshape(len(ids), int(counts[0])), ids


def regular_groups(labels, groups, size: int):
    """Group ids with exactly one positive and ``size`` rows (the scoreable impressions)."""
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    positives = np.bincount(inverse.reshape(-1), weights=(labels > 0), minlength=len(ids))
    return ids[(counts == size) & (positives == 1)]


def candidate_ranking_metrics(candidates, scores, positive, k: int = 10) -> dict:
    """Per-user HR@k and nDCG@k of a ranking over each user's retrieved ``candidates``
    (``[users, n]`` item indices, ``scores`` aligned) when the held-out item is
    ``positive[u]``: its rank is 1 + the candidates scored >= it (ties count against it,
    as in full ranking); a positive that was not retrieved is a miss (0). Also
    ``"retrieved"`` (1 where the positive is among the candidates: recall@n).

    >>> m = candidate_ranking_metrics([[4, 2, 9], [1, 3, 5]], [[0.2, 0.9, 0.1],
    ...                               [0.5, 0.5, 0.1]], [4, 7], k=2)
    >>> m["hr@2"].tolist(), round(float(m["ndcg@2"][0]), 4), m["retrieved"].tolist()
    ([1.0, 0.0], 0.6309, [1.0, 0.0])
    """
    candidates = np.asarray(candidates)
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive).reshape(-1, 1)
    is_positive = candidates == positive
    retrieved = is_positive.any(axis=1)
    own = np.where(retrieved, np.max(np.where(is_positive, scores, -np.inf), axis=1), np.inf)
    rank = 1 + ((scores >= own[:, None]) & ~is_positive).sum(axis=1)
    hit = retrieved & (rank <= k)
    return {f"hr@{k}": hit.astype(np.float64),
            f"ndcg@{k}": np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0),
            "retrieved": retrieved.astype(np.float64)}


def top_candidates(logits, exclude, positive, n: int) -> tuple:
    """Each user's ``n`` best items by ``logits`` ``[users, N + 1]`` (column 0 and the
    ``exclude`` mask left out, except the user's own ``positive``): ``(items [users, n],
    logits [users, n])``, best first; ties keep the lower index."""
    masked = np.array(logits, np.float64)
    blocked = np.array(exclude, dtype=bool)
    blocked[np.arange(len(masked)), np.asarray(positive)] = False
    blocked[:, 0] = True
    masked[blocked] = -np.inf
    order = np.argsort(-masked, axis=1, kind="stable")[:, :n]
    return order.astype(np.int32), np.take_along_axis(masked, order, axis=1)


def summarize(per_user: dict, rows, bootstrap: int, seed: int, keys=METRICS) -> dict:
    """Mean and 95% bootstrap CI of each metric in ``keys`` over the users indexed by
    ``rows``."""
    out = {"users_evaluated": int(len(rows)), "ci95": {}}
    for key in keys:
        values = per_user[key][rows]
        out[key] = float(values.mean()) if len(values) else float("nan")
        low, high = metrics.bootstrap_ci(values, num_samples=bootstrap, seed=seed)
        out["ci95"][key] = [low, high]
    return out


def format_table(rows: list) -> str:
    """Fixed-width text table of the quality rows."""
    head = (f"{'model':<16}{'hr@10':>8}{'ndcg@10 [95% CI]':>26}{'mrr':>8}{'auc':>8}"
            f"{'users':>7}{'train_s':>9}{'score_s':>9}")
    lines = [head, "-" * len(head)]

    def num(value, width=8, digits=4):
        return f"{'nan':>{width}}" if value is None or math.isnan(value) else \
            f"{value:>{width}.{digits}f}"

    for row in rows:
        low, high = row["ci95"]["ndcg@10"]
        ndcg = f"{row['ndcg@10']:.4f} [{low:.3f}, {high:.3f}]"
        train_s = row.get("train_seconds")
        score_s = row.get("score_seconds")
        lines.append(f"{row['model']:<16}{num(row['hr@10'])}{ndcg:>26}{num(row['mrr'])}"
                     f"{num(row['auc'])}{row['users_evaluated']:>7d}"
                     f"{num(train_s, 9, 1) if train_s is not None else '-':>9}"
                     f"{num(score_s, 9, 1) if score_s is not None else '-':>9}")
    return "\n".join(lines)


def format_full_table(rows: list) -> str:
    """Fixed-width text table of the rows' full-ranking metrics (``row["full_ranking"]``,
    or summaries with a ``model`` key)."""
    head = (f"{'model':<16}{'hr@10':>8}{'ndcg@10 [95% CI]':>26}{'hr@50':>8}{'ndcg@50':>8}"
            f"{'mrr':>8}{'hr@100':>8}{'users':>7}{'cands':>7}{'score_s':>9}")
    lines = [head, "-" * len(head)]
    for row in rows:
        full = row.get("full_ranking", row)
        if "skipped" in full:
            lines.append(f"{row['model']:<16}  not ranked: {full['skipped']}")
            continue
        low, high = full["ci95"]["ndcg@10"]
        ndcg = f"{full['ndcg@10']:.4f} [{low:.3f}, {high:.3f}]"
        cands = full.get("candidates_per_user", {}).get("mean")
        score_s = full.get("score_seconds")
        mark = "*" if full.get("users_subset") else ""
        lines.append(f"{row['model'] + mark:<16}{full['hr@10']:>8.4f}{ndcg:>26}"
                     f"{full.get('hr@50', float('nan')):>8.4f}"
                     f"{full.get('ndcg@50', float('nan')):>8.4f}"
                     f"{full['mrr']:>8.4f}{full.get('hr@100', float('nan')):>8.4f}"
                     f"{full['users_evaluated']:>7d}"
                     f"{'-' if cands is None else f'{cands:.0f}':>7}"
                     f"{'-' if score_s is None else f'{score_s:.1f}':>9}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movielens", choices=sorted(DATASETS),
                        help="movielens (a GroupLens directory), sequences (a directory of "
                             "sequential-benchmark files: RecBole atomic files) or "
                             "scientific (sequences, the Amazon Scientific files)")
    parser.add_argument("--data_dir", required=True,
                        help="the unpacked MovieLens directory, or the directory of the "
                             "sequential-benchmark files")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", default="",
                        help="base YAML config (default: configs/movielens.yaml for "
                             "movielens, configs/scientific.yaml -- the tuned recipe -- "
                             "for scientific, configs/sequences.yaml for sequences)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="dotted override for every model, repeatable")
    parser.add_argument("--set_for", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="override for one model (not data.*), e.g. "
                             "mf:train.learning_rate=1e-2; recorded in its row")
    parser.add_argument("--models", default="",
                        help="comma-separated rows: one per registered model kind with a "
                             "quality row (trainer/kinds/), the cross-encoder's "
                             f"{','.join(VARIANT_ROWS)} and RecBole's "
                             f"{','.join(recbole_peer.ROWS)} (default: every kind row and "
                             f"{','.join(DEFAULT_VARIANTS)}, plus "
                             f"{','.join(PRETRAINED_ROWS)} with --pretrained)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--pretrained", default="",
                        help="local Hugging Face BERT directory or keras-hub preset")
    parser.add_argument("--pretrained_train_examples", type=int, default=2000,
                        help="training examples for bert_pretrained (whole impressions, "
                             "seeded subset; 0 = all)")
    parser.add_argument("--pretrained_eval_users", type=int, default=0,
                        help="score bert_pretrained on a seeded subset of this many users "
                             "(0 = all); the row then compares all models on that subset")
    parser.add_argument("--full_ranking_pairwise_users", type=int, default=25,
                        help="full ranking of the cross-encoder rows (every (user, item) "
                             "pair through the model) on a seeded subset of this many users "
                             "(0 = all); their rows then compare every model on that subset")
    parser.add_argument("--full_ranking_pretrained_users", type=int, default=0,
                        help="full ranking of bert_pretrained on a seeded subset of this many "
                             "of the cross-encoder's full-ranking users (0 = none: a "
                             "pretrained model scores ~20-30 pairs/s on 2 CPU cores, i.e. "
                             "minutes per user on ml-latest-small)")
    parser.add_argument("--rerank_candidates", type=int, default=100,
                        help="retrieve -> rerank: the two_tower row hands each user's top N "
                             "catalogue items to every cross-encoder row (0 = off)")
    parser.add_argument("--rerank_train_positives", type=int, default=20000,
                        help="bert_rerank: training positives (seeded subset of whole "
                             "impressions) whose negatives come partly from retrieval")
    parser.add_argument("--rerank_hard_negatives", type=int, default=2,
                        help="bert_rerank: negatives per training positive drawn from the "
                             "two_tower row's top --rerank_candidates for that user state "
                             "(the rest of data.movielens.negatives_per_positive stay "
                             "uniform)")
    parser.add_argument("--recbole_venv", default=recbole_peer.DEFAULT_VENV,
                        help="recbole_* rows: RecBole's virtual environment (created there "
                             "with its pinned requirements on first use)")
    parser.add_argument("--recbole_learning_rates",
                        default=",".join(f"{lr:g}" for lr in recbole_peer.LEARNING_RATES),
                        help="recbole_* rows: learning rates searched (best validation "
                             "NDCG@10 wins)")
    parser.add_argument("--recbole_epochs", type=int, default=recbole_peer.EPOCHS,
                        help="recbole_* rows: RecBole's epochs (early stopping after 10 "
                             "without a better validation NDCG@10)")
    parser.add_argument("--recbole_threads", type=int, default=0,
                        help="recbole_* rows: torch threads (0 = torch's default)")
    parser.add_argument("--ensemble", action="append", default=[], metavar="A+B[+C]",
                        help="a row that ranks by the mean of the named rows' per-user "
                             "standardized catalogue logits (no weights fitted), repeatable; "
                             "rows ranked for every user only")
    parser.add_argument("--save_scores", action="store_true",
                        help="write each row's full-ranking catalogue logits to "
                             "OUT/scores/<row>.npz (logits [users, items + 1], column = "
                             "item index; the users, their held-out items and exclusions), "
                             "to compare or ensemble rows offline (benchmarks.compare_scores)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch training lines")
    return parser


class _Usage(Exception):
    pass


def _models(args) -> list:
    names = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else \
        default_models() + (list(PRETRAINED_ROWS) if args.pretrained else [])
    unknown = [m for m in names if m not in row_overrides() and m not in recbole_peer.ROWS]
    if unknown:
        raise _Usage(f"--models: unknown model(s) {unknown}; choose from "
                     f"{','.join([*row_overrides(), *recbole_peer.ROWS])}")
    if not names:
        raise _Usage("--models names no model")
    needing = [name for name in names if name in PRETRAINED_ROWS]
    if needing and not args.pretrained:
        raise _Usage(f"--models {','.join(needing)} needs --pretrained PATH")
    names = list(dict.fromkeys(names))
    for spec in args.ensemble:
        members = spec.split("+")
        if len(members) < 2 or len(set(members)) < len(members) or \
                any(m not in names for m in members):
            raise _Usage(f"--ensemble {spec!r}: name two or more distinct rows of --models "
                         "joined by '+'")
    if "bert_rerank" in names and (RETRIEVER not in names or args.rerank_candidates <= 0
                                   or names.index(RETRIEVER) > names.index("bert_rerank")):
        raise _Usage(f"--models bert_rerank trains on the {RETRIEVER} row's retrieved items: "
                     f"list {RETRIEVER} before it and keep --rerank_candidates > 0")
    return names


def _per_model_overrides(args) -> dict:
    """Row name -> its overrides: DEFAULT_SET_FOR, then the base config's RECIPE_SET_FOR,
    then --set_for (later ones win; all recorded in the row)."""
    config = os.path.realpath(args.config or DATASETS[args.dataset][1])
    recipe = next((rows for path, rows in RECIPE_SET_FOR.items()
                   if os.path.realpath(path) == config), {})
    out = {name: DEFAULT_SET_FOR.get(name, []) + recipe.get(name, [])
           for name in row_overrides()}
    for item in args.set_for:
        name, sep, override = item.partition(":")
        if not sep or name not in row_overrides() or "=" not in override:
            raise _Usage(f"--set_for {item!r}: expected MODEL:KEY=VALUE with MODEL one of "
                         f"{','.join(row_overrides())}")
        if override.strip().startswith("data."):
            raise _Usage(f"--set_for {item!r}: data.* is shared by every model (the "
                         "protocol); use --set")
        out[name].append(override)
    return out


def _check_pretrained(path: str) -> None:
    if not path or "://" in path:
        return
    looks_like_path = os.sep in path or path.startswith(".") or os.path.exists(path)
    if looks_like_path and not os.path.isfile(os.path.join(path, "config.json")):
        raise _Usage(f"--pretrained {path}: not a Hugging Face model directory (needs "
                     "config.json, model.safetensors and vocab.txt)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        names = _models(args)
        per_model = _per_model_overrides(args)
        if args.bootstrap < 1:
            raise _Usage("--bootstrap must be >= 1")
        if args.full_ranking_pairwise_users < 0:
            raise _Usage("--full_ranking_pairwise_users must be >= 0 (0 = all users)")
        if args.full_ranking_pretrained_users < 0:
            raise _Usage("--full_ranking_pretrained_users must be >= 0 (0 = none)")
        if args.rerank_candidates < 0 or args.rerank_train_positives < 0 or \
                args.rerank_hard_negatives < 0:
            raise _Usage("--rerank_candidates, --rerank_train_positives and "
                         "--rerank_hard_negatives must be >= 0")
        _check_pretrained(args.pretrained)
        _check_recbole(args)
        result = run(args, names, per_model)
    except (_Usage, UserInputError, recbole_peer.RecBoleError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n" + format_table(result["rows"]))
    for row in result["rows"]:
        if "comparison_on_subset" in row:
            print(f"\non the {row['users_evaluated']} users {row['model']} was scored on:")
            print(format_table([{"model": name, **values} for name, values in
                                row["comparison_on_subset"].items()]))
    protocol = result["protocol"]["full_ranking"]
    against = ("every never-rated catalogue item" if result["protocol"]["dataset"] ==
               "movielens" else "every catalogue item, history included")
    print(f"\nfull ranking: the held-out item against {against} "
          f"({protocol['catalogue_items']} items; * = a user subset, compared below)")
    print(format_full_table(result["rows"]))
    files = result["protocol"].get("files")
    if files in PUBLISHED:
        print(f"\n{files}: our rows beside the figures published on the same files "
              "(same protocol; the published rows are quoted, not run here)")
        print(format_published_table(files, result["rows"]))
    for row in result["rows"]:
        if "comparison_on_subset" in row["full_ranking"]:
            print(f"\nfull ranking on the {row['full_ranking']['users_evaluated']} users "
                  f"{row['model']} was ranked for:")
            print(format_full_table([{"model": name, **values} for name, values in
                                     row["full_ranking"]["comparison_on_subset"].items()]))
    for title, section in (("sampled", None), ("full-ranking", "full_ranking")):
        paired = [(row["model"], other, values["ndcg@10"]) for row in result["rows"]
                  for other, values in (row if section is None else row[section]).get(
                      "paired_difference", {}).items()]
        if paired:
            print(f"\n{title} nDCG@10, paired over the same users (row minus other, "
                  "95% CI):")
            print("\n".join(f"  {row:<16} - {other:<16} {d['mean']:+.4f} "
                             f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
                             for row, other, d in paired))
    cold = result["protocol"].get("cold_start")
    if cold:
        print(f"\ncold start: the {cold['test_users']} test users whose target is one of the "
              f"{cold['items_held_out']} items held out of training")
        print(format_full_table([{"model": row["model"], **row["cold_start"]}
                                 for row in result["rows"] if "cold_start" in row]))
    blocks = [row["retrieve_rerank"] for row in result["rows"] if "retrieve_rerank" in row]
    if blocks:
        print(f"\nretrieve -> rerank: {RETRIEVER}'s top {blocks[0]['candidates']} never-rated "
              f"items per user (recall {blocks[0]['recall@candidates']:.3f}) reranked; the "
              "fusion weight is chosen on validation users")
        print(format_rerank_table(result["rows"]))
    peers = [row for row in result["rows"] if "recbole_reported" in row]
    if peers:
        print("\nRecBole rows: our metrics on RecBole's scores beside RecBole's own evaluator "
              "(its protocol: nothing masked, its tie order; ours_unmasked = our code under "
              "that protocol)")
        print(format_recbole_table(peers))
    print(f"\nwrote {os.path.join(args.out, 'quality.json')}")
    return 0


def _check_recbole(args) -> None:
    try:
        rates = [float(v) for v in args.recbole_learning_rates.split(",") if v.strip()]
    except ValueError:
        rates = []
    if not rates or any(not rate > 0 for rate in rates):
        raise _Usage("--recbole_learning_rates needs comma-separated positive numbers")
    if args.recbole_epochs < 1 or args.recbole_threads < 0:
        raise _Usage("--recbole_epochs must be >= 1 and --recbole_threads >= 0")
    args.recbole_learning_rates = ",".join(f"{rate:g}" for rate in rates)


def format_recbole_table(rows: list) -> str:
    """The RecBole rows' full-ranking figures three ways: ours (the benchmark's
    exclusions), ours with nothing masked, and RecBole's own evaluator's."""
    head = (f"{'model':<18}{'figures':<34}{'R@10':>8}{'N@10':>8}{'R@50':>8}{'N@50':>8}")
    lines = [head, "-" * len(head)]
    for row in rows:
        full, reported = row["full_ranking"], row["recbole_reported"]
        test = reported["test"]
        for label, values in (
                ("ours (benchmark protocol)", (full["hr@10"], full["ndcg@10"],
                                               full["hr@50"], full["ndcg@50"])),
                ("ours, nothing masked", tuple(reported["ours_unmasked"][k] for k in
                                               ("hr@10", "ndcg@10", "hr@50", "ndcg@50"))),
                ("RecBole's evaluator", tuple(test.get(k, float("nan")) for k in
                                              ("recall@10", "ndcg@10", "recall@50",
                                               "ndcg@50")))):
            lines.append(f"{row['model']:<18}{label:<34}"
                         + "".join(f"{float(v):>8.4f}" for v in values))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------

def _config(args, overrides: list):
    source, default_config, name = DATASETS[args.dataset]
    cfg = config_lib.load_config(args.config or default_config,
                                 list(args.overrides) + overrides)
    # Set directly rather than as overrides: a path must not be parsed as YAML.
    cfg.data.source = source
    cfg.data.data_dir = args.data_dir
    if name:
        cfg.data.sequences.name = name
    config_lib.validate(cfg)
    return cfg


def _source_settings(cfg):
    """The data source's own settings (``data.movielens`` or ``data.sequences``): each has
    ``eval_negatives``, ``negatives_per_positive`` and ``seed``."""
    return getattr(cfg.data, cfg.data.source)


def _excluded_mask(cfg, ids, users) -> np.ndarray:
    """bool ``[len(users), len(ids.items) + 1]``: the items full ranking leaves out of each
    user's candidates. MovieLens: every item the user rated (:func:`_rated_mask`). The
    sequential benchmarks: none but column 0 ("no item"), as their published figures do
    (RecBole's full-sort evaluation of a sequential model masks only its padding id)."""
    if cfg.data.source == "movielens":
        return _rated_mask(cfg, ids, users)
    mask = np.zeros([len(users), len(ids.items) + 1], dtype=bool)
    mask[:, 0] = True
    return mask


def _impression_subset(table, max_examples: int, seed: int):
    """A seeded subset of whole impressions holding at most ``max_examples`` rows."""
    if max_examples <= 0 or len(table) <= max_examples:
        return table
    ids, counts = np.unique(table.group, return_counts=True)
    order = np.random.default_rng([seed, 1]).permutation(len(ids))
    keep = ids[order][np.cumsum(counts[order]) <= max_examples]
    if not len(keep):
        keep = ids[order][:1]
    return table.subset(np.isin(table.group, keep))


def _rated_mask(cfg, ids, users) -> np.ndarray:
    """bool ``[len(users), len(ids.items) + 1]``: True where the user rated the item (any
    rating, any split) and in column 0 ("no item"). The rated sets come from the loader's
    own parsing and cleaning (``movielens.read_movielens`` + ``prepare``: duplicates and
    ratings of untitled movies dropped alike), read a second time because the canonical
    examples keep positives only."""
    from trainer.data import movielens

    ml = cfg.data.movielens
    _, _, catalogue, ratings, untitled, skipped, _ = movielens.read_movielens(
        cfg.data.data_dir, ml)
    prep = movielens.prepare(catalogue, *ratings, ml, skipped, untitled)
    column = np.array([ids.items[item] for item in prep.item_ids], dtype=np.int64)
    code_of_user = {user: code for code, user in enumerate(prep.user_ids)}
    mask = np.zeros([len(users), len(ids.items) + 1], dtype=bool)
    mask[:, 0] = True
    for row, user in enumerate(users):
        code = code_of_user[user]
        mask[row, column[prep.item[prep.starts[code]:prep.ends[code]]]] = True
    return mask


def _write_recbole_split(args, base, prepared, scored_users, user_rows) -> dict:
    """This run's split as RecBole benchmark files under ``--out/recbole/data`` (see
    ``recbole_peer.write_split``): the sequential benchmarks' files linked as they are
    (unless items are held out for cold start: then, as for any other source, our
    prepared positives are written)."""
    if not prepared.splits.get("train"):
        raise UserInputError("the recbole_* rows write the training examples out; they are "
                             "not in memory with data.tfrecord_dir")
    info = prepared.info
    linked = base.data.source == "sequences" and not info.get("cold_start")
    directory = os.path.join(args.out, "recbole", "data")
    split = recbole_peer.write_split(
        directory, info.get("name") or base.data.source, prepared.splits,
        prepared.ids.items, scored_users.tolist(), user_rows.item_index.tolist(),
        sequences_dir=args.data_dir if linked else None,
        max_history=recbole_peer.MAX_ITEM_LIST_LENGTH)
    print(f"\n== RecBole's split ({split['mode']}): {split['rows']} rows in {directory} ==",
          flush=True)
    return split


def _recbole_row(name, args, python, split, test, scored, user_rows, rated, seed,
                 keep: dict | None = None) -> tuple:
    """A recbole_* row: runs RecBole in its environment and scores its catalogue scores
    with this benchmark's metric code; ``(row, per_user_sampled, per_user_full)``
    (``keep``, for an ensemble or ``--save_scores``, gets the scores under ``name``)."""
    print(f"\n== {name}: RecBole {recbole_peer.ROWS[name]} in {args.recbole_venv} ==",
          flush=True)
    directory = os.path.join(args.out, "recbole")
    out_dir = os.path.join(directory, name)
    rates = [float(v) for v in args.recbole_learning_rates.split(",")]
    result = recbole_peer.run_peer(python, name, os.path.join(directory, "data"), out_dir,
                                   learning_rates=rates, epochs=args.recbole_epochs,
                                   threads=args.recbole_threads)
    scores = recbole_peer.read_scores(out_dir, split)
    if keep is not None:
        keep[name] = scores
    row, per_user, per_user_full = recbole_peer.benchmark_row(
        name, scores, result, positive=user_rows.item_index, exclude=rated, groups=scored,
        sampled_items=test.item_index, sampled_labels=test.label, sampled_groups=test.group,
        bootstrap=args.bootstrap, seed=seed)
    print(f"   {name}: hr@10 {row['hr@10']:.4f}  ndcg@10 {row['ndcg@10']:.4f}  full-ranking "
          f"ndcg@10 {row['full_ranking']['ndcg@10']:.4f} ({len(scored)} users)  lr "
          f"{result['chosen_learning_rate']:g}  train {row['train_seconds']:.1f} s "
          f"(search {result['seconds_total']:.0f} s)", flush=True)
    return row, per_user, per_user_full


def _seeded_rows(pool: np.ndarray, size: int, seed: list) -> np.ndarray:
    """A sorted seeded subset of ``size`` entries of ``pool`` (all of it for 0 or more)."""
    if size <= 0 or size >= len(pool):
        return pool
    return np.sort(np.random.default_rng(seed).choice(pool, size, replace=False))


def run(args, names: list, per_model: dict) -> dict:
    """Loads the data once, trains and scores each model; writes and returns quality.json."""
    import keras

    from trainer.training import distribute, train_lib

    from trainer.evaluation import scoring
    from trainer import kinds
    from trainer.data.prepared import PreparedData
    from trainer.io import atomic_write_text, write_json

    try:
        base = _config(args, [])
        kinds.for_config(base)  # the kind's own checks, which data preparation runs
    except ConfigError as error:
        if not args.overrides:
            raise
        # The base config (the dataset's, its model.kind included) is checked before any
        # row, so a --set meant for some rows (train.loss=full_softmax for sasrec) fails
        # here on the base kind, which the user may not even be training.
        raise ConfigError(f"{error}\n--set applies to the base config and to every row; set a "
                          "key for one row with --set_for MODEL:KEY=VALUE") from error
    peer_rows = [name for name in names if name in recbole_peer.ROWS]
    # Made (or found) before any data is read, so a failed install costs nothing else.
    peer_python = recbole_peer.ensure_env(args.recbole_venv) if peer_rows else None
    started = time.time()
    # The same data preparation `train` uses (one id vocabulary, one WordPiece vocabulary).
    prepared = train_lib.prepare_data(base, args.out)
    tables = prepared.tables
    source = _source_settings(base)
    if len(tables["test"]) == 0:
        raise DataError("the test split is empty; check the data"
                        + (" and data.movielens.min_positives"
                           if base.data.source == "movielens" else ""))
    user_of_group = {}
    for name in ("validation", "test"):
        users = [ex.user_id for ex in prepared.splits[name]]
        user_of_group[name] = dict(zip(tables[name].group.tolist(), users))

    negatives = source.eval_negatives
    scored = regular_groups(tables["test"].label, tables["test"].group, 1 + negatives)
    skipped_users = len(np.unique(tables["test"].group)) - len(scored)
    if not len(scored):
        raise DataError(f"no test impression has 1 positive + {negatives} negatives (users "
                        f"rated nearly every item?); lower data.{base.data.source}."
                        "eval_negatives")
    test = tables["test"].subset(np.isin(tables["test"].group, scored))
    scored_users = np.array([user_of_group["test"][g] for g in scored.tolist()], dtype=object)

    vocabulary = prepared.vocabulary
    text_rows = [name for name in names
                 if name not in recbole_peer.ROWS and learns_vocabulary(name)]
    if text_rows and vocabulary is None:
        raise UserInputError(f"the {','.join(text_rows)} row(s) learn their vocabulary from "
                             "the base config: make it a random-init text kind (model.kind="
                             "two_tower or cross_encoder, no model.pretrained) in "
                             "--config/--set")

    # Full ranking: one row per scored user (its held-out positive), in `scored` order.
    positives = np.flatnonzero(test.label > 0)
    positives = positives[np.argsort(test.group[positives], kind="stable")]
    user_rows = test.subset(positives)
    assert np.array_equal(user_rows.group, scored)
    ids = prepared.ids
    rated = _excluded_mask(base, ids, scored_users)
    if base.data.source == "movielens" and \
            not rated[np.arange(len(scored)), user_rows.item_index].all():
        raise DataError("a held-out test item is missing from its user's ratings; the "
                        "rated sets disagree with the split")
    catalogue = prepared.catalogue
    item_text = ids.item_texts(catalogue, base.data.item_text_fields)
    # The items each positive competes with (the positive itself not counted).
    candidates = (~rated).sum(axis=1) - ~rated[np.arange(len(scored)), user_rows.item_index]

    # Retrieve -> rerank: the validation users' held-out items choose the fusion weight.
    rerank_on = args.rerank_candidates > 0 and RETRIEVER in names and \
        any(name in RERANKERS for name in names)
    stage_users = {}
    if rerank_on:
        val_positives = np.flatnonzero(tables["validation"].label > 0)
        val_positives = val_positives[np.argsort(tables["validation"].group[val_positives],
                                                 kind="stable")]
        val_rows = tables["validation"].subset(val_positives)
        val_users = [user_of_group["validation"][g] for g in val_rows.group.tolist()]
        stage_users = {"validation": (val_rows, _excluded_mask(base, ids, val_users)),
                       "test": (user_rows, rated)}
    train_users = (np.array([ex.user_id for ex in prepared.splits["train"]], dtype=object)
                   if "bert_rerank" in names else None)

    peer_split = (_write_recbole_split(args, base, prepared, scored_users, user_rows)
                  if peer_rows else None)
    data_seconds = time.time() - started
    info = prepared.info
    # What the featurizers need (two-tower kinds: the catalogue and ids); the examples go.
    featurizer_data = PreparedData(tables={}, splits={}, info=info, ids=ids,
                                             vocabulary=vocabulary, catalogue=catalogue)
    del prepared

    strategy = distribute.make_strategy(base.runtime)
    seed = source.seed
    all_rows = np.arange(len(scored))
    eval_subset = None  # row indices (into scored users) of the pretrained user subset
    if "bert_pretrained" in names and 0 < args.pretrained_eval_users < len(scored):
        eval_subset = _seeded_rows(all_rows, args.pretrained_eval_users, [seed, 2])
    # Users the pairwise (cross-encoder) rows are fully ranked for: inside bert_pretrained's
    # users when those are a subset, so every pairwise row is ranked on the same users.
    pairwise_rows = _seeded_rows(eval_subset if eval_subset is not None else all_rows,
                                 args.full_ranking_pairwise_users, [seed, 3])
    per_user_all, per_user_full_all, full_rows_of, rows = {}, {}, {}, []
    retrieved, hard_train = {}, None
    # Catalogue logits of the rows an --ensemble combines, [users, items + 1].
    ensembled = {m for spec in args.ensemble for m in spec.split("+")}
    kept_logits = {}
    # Each pair's bootstrap, computed once: the partial file is rewritten after every row.
    paired_memo = {}

    def row_finished() -> None:
        """Adds each ensemble whose members are all ranked, then saves what is finished
        (``quality.partial.json``), so a run stopped later keeps its finished rows."""
        done = {row["model"] for row in rows}
        for spec in args.ensemble:
            if spec not in done and all(m in kept_logits for m in spec.split("+")):
                row, per_user_all[spec], per_user_full_all[spec] = _ensemble_row(
                    spec, kept_logits, rows, user_rows, rated, test, scored, args.bootstrap,
                    seed)
                full_rows_of[spec] = all_rows
                rows.append(row)
        _write_partial(args.out, rows, per_user_all, per_user_full_all, len(scored),
                       args.bootstrap, seed, paired_memo)
    for name in names:
        if name in recbole_peer.ROWS:
            scores = {}
            row, per_user_all[name], per_user_full_all[name] = _recbole_row(
                name, args, peer_python, peer_split, test, scored, user_rows, rated, seed,
                scores)
            if name in ensembled:
                kept_logits[name] = scores[name]
            if args.save_scores:
                _save_scores(args.out, name, scores[name], scored_users, user_rows.item_index,
                             rated)
            full_rows_of[name] = all_rows
            rows.append(row)
            row_finished()
            continue
        overrides = list(row_overrides()[name])
        if name == "bert_pretrained":
            overrides += PRETRAINED_OVERRIDES
        cfg = _config(args, overrides + per_model[name])
        if name in PRETRAINED_ROWS:
            cfg.model.pretrained = args.pretrained  # a path, so not a YAML override
        if cfg.train.early_stopping_metric.startswith("full_") and \
                not kinds.kind_class(cfg.model.kind).scores_catalogue_from_item_vectors:
            # A pairwise kind cannot rank the catalogue every epoch: it stops on the
            # sampled validation candidates (recorded in the row's settings).
            cfg.train.early_stopping_metric = "ndcg@10"
        kind = kinds.for_config(cfg)
        model_tables = {"train": tables["train"], "validation": tables["validation"],
                        "test": test}
        if name == "bert_rerank":
            model_tables["train"] = hard_train
        users_rows = all_rows
        if name == "bert_pretrained":
            model_tables["train"] = _impression_subset(
                tables["train"], args.pretrained_train_examples, seed)
            if eval_subset is not None:
                users_rows = eval_subset
                chosen = set(scored_users[users_rows].tolist())
                model_tables["test"] = test.subset(np.isin(test.group, scored[users_rows]))
                val = tables["validation"]
                val_users = np.array([user_of_group["validation"][g]
                                      for g in val.group.tolist()], dtype=object)
                model_tables["validation"] = val.subset(
                    np.array([u in chosen for u in val_users], dtype=bool))
        packer = train_lib.make_packer(cfg, None if cfg.model.pretrained else vocabulary,
                                       featurizer_data, cache_dir=args.out)

        print(f"\n== {name}: {len(model_tables['train'])} training examples, "
              f"{cfg.train.epochs} epoch(s) ==", flush=True)
        keras.utils.set_random_seed(cfg.train.seed)
        t0 = time.time()
        with strategy.scope():
            model = train_lib.build_model(cfg, packer, ids, model_tables["train"])
        build_seconds = time.time() - t0
        fitted = train_lib.fit_model(cfg, model, model_tables, packer, strategy,
                                     verbose=0 if args.quiet else 2, item_text=item_text)
        train_seconds = time.time() - t0
        t0 = time.time()
        logits = scoring.predict_logits(model, model_tables["test"], packer,
                                          cfg.train.eval_batch_size)
        score_seconds = time.time() - t0
        matrix, groups = user_matrix(logits, model_tables["test"].label,
                                     model_tables["test"].group)
        assert np.array_equal(groups, scored[users_rows])  # same users, same order
        per_user_rows = metrics.sampled_ranking_metrics(matrix, positive_index=0, ks=KS)
        per_user = {k: np.full(len(scored), np.nan) for k in METRICS}
        for key in METRICS:
            per_user[key][users_rows] = per_user_rows[key]
        per_user_all[name] = per_user

        # Full ranking. A kind without cached item vectors scores every pair.
        pairwise = not kind.scores_catalogue_from_item_vectors
        full_rows = np.intersect1d(pairwise_rows, users_rows) if pairwise else users_rows
        if name == "bert_pretrained":
            full_rows = _seeded_rows(full_rows, args.full_ranking_pretrained_users,
                                     [seed, 4]) if args.full_ranking_pretrained_users else []
        full_rows_of[name] = full_rows
        row = {"model": name, **summarize(per_user, users_rows, args.bootstrap, seed),
               "candidates_per_user": int(matrix.shape[1]),
               "train_seconds": round(train_seconds, 2),
               "score_seconds": round(score_seconds, 2)}
        if not len(full_rows):
            row["full_ranking"] = {"skipped": "not requested: a pretrained cross-encoder "
                                              "scores every catalogue item for each user (see "
                                              "--full_ranking_pretrained_users)"}
        else:
            row["full_ranking"] = _full_ranking(
                kind, model, packer, user_rows, full_rows, item_text, rated, logits,
                model_tables["test"], scored, cfg.train.eval_batch_size, pairwise, args, seed,
                keep=name in ensembled or args.save_scores)
            catalogue_logits = row["full_ranking"].pop("catalogue_logits", None)
            if args.save_scores:
                _save_scores(args.out, name, catalogue_logits, scored_users[full_rows],
                             user_rows.item_index[full_rows], rated[full_rows])
            if name in ensembled:
                if len(full_rows) < len(scored):
                    raise UserInputError(f"--ensemble: {name} is ranked on a subset of the "
                                         "users; an ensemble combines rows ranked for all")
                kept_logits[name] = catalogue_logits
            ranked = row["full_ranking"].pop("per_user")
            per_user_full = {k: np.full(len(scored), np.nan) for k in FULL_METRICS}
            for key in FULL_METRICS:
                per_user_full[key][full_rows] = ranked[key]
            per_user_full_all[name] = per_user_full
        if rerank_on and name == RETRIEVER:
            retrieved = _retrieve_stage(kind, model, packer, item_text, stage_users,
                                        args.rerank_candidates, cfg.train.eval_batch_size)
            if "bert_rerank" in names:
                hard_train = _hard_negative_table(
                    kind, model, packer, tables["train"], train_users, base, ids, item_text,
                    args, seed, cfg.train.eval_batch_size)
        if retrieved and name in RERANKERS:
            row["retrieve_rerank"] = _rerank_stage(kind, model, packer, retrieved, item_text,
                                                   cfg.train.eval_batch_size, args, seed)
        history = fitted["history"]
        monitor = f"val_{cfg.train.early_stopping_metric}"
        if history.get(monitor) and history.get("wall_seconds"):
            row["time_to_quality"] = time_to_quality(
                history["wall_seconds"], history[monitor], history["epoch_train_seconds"],
                fitted["steps_per_epoch"] * cfg.train.batch_size, train_seconds,
                offset=build_seconds, metric=monitor)
        row.update({"settings": _settings(cfg, fitted, model_tables, model),
                    "overrides": (PRETRAINED_OVERRIDES if name == "bert_pretrained" else [])
                    + per_model[name]})
        row["settings"].update(kind.featurizer_settings(packer))
        if name == "bert_pretrained":
            row["settings"]["pretrained"] = args.pretrained
            row["settings"]["eval_users_subset"] = eval_subset is not None
        rows.append(row)
        full_ndcg = row["full_ranking"].get("ndcg@10", float("nan"))
        print(f"   {name}: hr@10 {row['hr@10']:.4f}  ndcg@10 {row['ndcg@10']:.4f}  "
              f"full-ranking ndcg@10 {full_ndcg:.4f} ({len(full_rows)} users)  train "
              f"{train_seconds:.1f} s  score {score_seconds:.1f} s + "
              f"{row['full_ranking'].get('score_seconds', 0.0):.1f} s", flush=True)
        row_finished()
        keras.backend.clear_session()  # free the graph before the next model

    # The ensembles were added as soon as their members were ranked; they are listed last.
    rows = ([row for row in rows if "ensemble_of" not in row]
            + [row for row in rows if "ensemble_of" in row])
    for row in rows:
        if row["model"] == "bert_pretrained" and eval_subset is not None:
            row["comparison_on_subset"] = {
                name: summarize(per_user_all[name], eval_subset, args.bootstrap, seed)
                for name in names}
        if row["full_ranking"].get("users_subset"):
            subset = full_rows_of[row["model"]]
            row["full_ranking"]["comparison_on_subset"] = {
                other["model"]: summarize(per_user_full_all[other["model"]], subset,
                                          args.bootstrap, seed, FULL_METRICS)
                for other in rows if other["model"] in per_user_full_all
                and np.isfinite(per_user_full_all[other["model"]]["mrr"][subset]).all()}

    _add_paired_differences(rows, per_user_full_all, len(scored), args.bootstrap, seed,
                            memo=paired_memo)
    _add_paired_differences(rows, per_user_all, len(scored), args.bootstrap, seed, None,
                            paired_memo)
    cold_start = _cold_start(rows, per_user_full_all, info, ids, user_rows, args.bootstrap,
                             seed)

    pairwise_run = any(row["full_ranking"].get("pairwise") for row in rows)
    movielens = base.data.source == "movielens"
    protocol = {
        "dataset": args.dataset, "data_dir": args.data_dir, "variant": info.get("variant"),
        "files": info.get("name"),
        "config": args.config or DATASETS[args.dataset][1],
        "overrides": list(args.overrides),
        "split": ("leave-last-out chronological" if movielens else
                  "the files' own (leave-one-out: last item test, the one before validation)"),
        **({"positive_threshold": base.data.movielens.positive_threshold,
            "min_positives": base.data.movielens.min_positives,
            "train_negative_sampling": base.data.movielens.negative_sampling,
            "max_train_examples": base.data.movielens.max_train_examples}
           if movielens else {}),
        "users_evaluated": int(len(scored)), "users_skipped_short_impressions": skipped_users,
        "negatives_per_user": negatives, "candidates_per_user": negatives + 1,
        "eval_negative_sampling": ("uniform over items the user never rated, seeded"
                                   if movielens else
                                   "uniform over items not in the user's rows, seeded"),
        "train_negatives_per_positive": source.negatives_per_positive,
        "train_examples": len(tables["train"]),
        "seed": source.seed, "train_seed": base.train.seed,
        "bootstrap_samples": args.bootstrap, "bootstrap_seed": seed, "confidence": 0.95,
        "ks": list(KS),
        "ties": "a negative tied with the positive ranks above it (pessimistic)",
        "metrics": "mean over users of per-user HR@10, nDCG@10, MRR, AUC "
                   "(trainer.evaluation.metrics.sampled_ranking_metrics)",
        "full_ranking": {
            "candidates": ("the held-out positive and every catalogue item the user never "
                           "rated (any rating, any split); no sampling" if movielens else
                           "every catalogue item, the user's history included (as the "
                           "published figures: RecBole's full-sort evaluation of sequential "
                           "models masks only its padding id); no sampling"),
            "excluded_from": ("trainer.data.movielens.read_movielens + prepare" if movielens
                              else "nothing"),
            "ks": list(FULL_KS),
            "catalogue_items": len(ids.items),
            "candidates_per_user": _spread(candidates),
            "ties": "an item tied with the positive ranks above it (pessimistic)",
            "metrics": "mean over users of per-user HR@k, nDCG@k, MRR (HR@k = Recall@k with "
                       "one held-out item; trainer.evaluation.metrics.full_ranking_metrics), "
                       "same bootstrap",
            "logits": "ModelKind.catalogue_logits (trainer/kinds/)",
            "pairwise_users": int(len(pairwise_rows)) if pairwise_run else None,
            "pretrained_users": (int(len(full_rows_of["bert_pretrained"]))
                                 if "bert_pretrained" in names else None),
            "pairwise_note": (
                "rows whose kind scores every (user, item) pair (the cross-encoders) are "
                "ranked on a seeded subset of users"
                + (" drawn from bert_pretrained's users" if eval_subset is not None else "")
                + "; their full_ranking.comparison_on_subset gives every model on it"
                if pairwise_run and len(pairwise_rows) < len(scored) else
                "every row is ranked for every scored user"),
        },
        "data_seconds": round(data_seconds, 2),
        "replicas": strategy.num_replicas_in_sync,
    }
    if retrieved:
        protocol["retrieve_rerank"] = {
            "retriever": RETRIEVER, "candidates": args.rerank_candidates,
            "candidates_from": "the retriever's catalogue logits, with full ranking's "
                               "exclusions (the held-out item kept)",
            "rerankers": [name for name in names if name in RERANKERS],
            "metrics": "per-user HR@10 / nDCG@10 of the held-out item within the reranked "
                       "candidates (a held-out item that was not retrieved is a miss; ties "
                       "count against it); paired bootstrap of each difference with "
                       "retrieval alone",
            "fusion": "rerank logit + w * retrieval logit, w in "
                      f"{list(FUSION_WEIGHTS)} chosen by validation nDCG@10 (the validation "
                      "users' held-out items, retrieved the same way)",
            "bert_rerank_training": (
                f"{args.rerank_train_positives} training positives (0 = all), "
                f"{args.rerank_hard_negatives} negatives each drawn from the retriever's top "
                f"{args.rerank_candidates} for that training state, the rest uniform"
                if "bert_rerank" in names else None),
        }
    if "bert_pretrained" in names:
        protocol["pretrained_eval_users"] = (int(len(eval_subset)) if eval_subset is not None
                                             else int(len(scored)))
        protocol["pretrained_note"] = (
            "bert_pretrained is scored on a seeded subset of users (its validation uses the "
            "same users); its row's comparison_on_subset gives every model on that subset"
            if eval_subset is not None else "bert_pretrained is scored on all users")
    if cold_start:
        protocol["cold_start"] = cold_start
    if peer_rows:
        protocol["recbole"] = {
            "rows": peer_rows, "venv": args.recbole_venv,
            "requirements": list(recbole_peer.REQUIREMENTS),
            "split": {key: peer_split[key] for key in (
                "name", "mode", "files", "rows", "rows_without_history",
                "histories_truncated", "test_users_without_history",
                "max_item_list_length")},
            "learning_rates": args.recbole_learning_rates,
            "epochs": args.recbole_epochs,
            "scores": "the chosen run's full_sort_predict for every scored test user and "
                      "catalogue item, through the same full-ranking code as every row "
                      "(the same exclusions, ties and bootstrap)"}
    result = {"protocol": protocol, "rows": rows}
    plot_time_to_quality(rows, os.path.join(args.out, "time_to_quality.png"))
    write_json(os.path.join(args.out, "quality.json"), result, sort_keys=False)
    write_json(os.path.join(args.out, "data_info.json"), info)
    atomic_write_text(os.path.join(args.out, "config.yaml"), config_lib.dump_yaml(base))
    partial = os.path.join(args.out, PARTIAL_FILE)
    if os.path.exists(partial):
        os.remove(partial)  # quality.json now holds every row
    return result


def _save_scores(out: str, name: str, logits: np.ndarray, users, targets,
                 excluded) -> str:
    """``--save_scores``: ``OUT/scores/<name>.npz`` (compressed), written atomically, with
    what a row's full-ranking metrics are computed from: ``logits`` (float32 ``[users,
    items + 1]``, column = the run's item index, column 0 "no item"), ``users`` (their
    ids, in the rows' order), ``targets`` (each user's held-out item column) and
    ``excluded`` (bool, the columns left out of each user's candidates), so that
    ``metrics.full_ranking_metrics(logits, targets, excluded)`` gives the row again."""
    from trainer.io import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez_compressed(buffer, logits=np.asarray(logits, np.float32),
                        users=np.asarray(users, str), targets=np.asarray(targets, np.int64),
                        excluded=np.asarray(excluded, bool))
    path = os.path.join(out, "scores", f"{name}.npz")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _write_partial(out: str, rows: list, per_user: dict, per_user_full: dict, users: int,
                   bootstrap: int, seed: int, memo: dict | None = None) -> None:
    """Writes ``PARTIAL_FILE``: the rows finished so far with their paired differences
    (sampled and full ranking), rewritten after each row. The full run replaces it with
    ``quality.json`` (protocol, cold start, subsets) and deletes it."""
    from trainer.io import write_json

    finished = copy.deepcopy(rows)
    _add_paired_differences(finished, per_user_full, users, bootstrap, seed, memo=memo)
    _add_paired_differences(finished, per_user, users, bootstrap, seed, None, memo)
    write_json(os.path.join(out, PARTIAL_FILE),
               {"partial": True, "finished": [row["model"] for row in finished],
                "rows": finished}, sort_keys=False)


def time_to_quality(wall_seconds, values, epoch_train_seconds, examples_per_epoch: int,
                    total_seconds: float, offset: float = 0.0,
                    metric: str = "val_full_ndcg@10") -> dict:
    """A row's time to quality, from its per-epoch history: seconds from the row's start
    (``offset``: building the model) to the end of its best validation epoch and in all,
    median seconds per epoch (validation included) and of its training steps alone,
    training examples per second, and the validation curve ``[[seconds, value], ...]``."""
    wall = np.asarray(wall_seconds, np.float64) + offset
    values = np.asarray(values, np.float64)
    best = int(np.nanargmax(values))
    train_epoch = float(np.median(epoch_train_seconds))
    return {"metric": metric, "best_epoch": best + 1,
            "seconds_to_best_epoch": round(float(wall[best]), 2),
            "total_seconds": round(float(total_seconds), 2),
            "seconds_per_epoch": round(float(np.median(np.diff(wall, prepend=offset))), 3),
            "train_seconds_per_epoch": round(train_epoch, 3),
            "train_examples_per_s": round(examples_per_epoch / train_epoch, 1),
            "curve": [[round(float(t), 2), round(float(v), 5)] for t, v in zip(wall, values)]}


def plot_time_to_quality(rows: list, path: str) -> str | None:
    """``path``: every trained row's validation curve against wall-clock seconds (PNG);
    None when no row has one."""
    curves = [(row["model"], row["time_to_quality"]) for row in rows
              if row.get("time_to_quality", {}).get("curve")]
    if not curves:
        return None
    from trainer.evaluation.run_reports import new_figure, save_png

    figure = new_figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    for name, ttq in curves:
        seconds, values = zip(*ttq["curve"])
        line, = axes.plot(seconds, values, marker=".", label=name)
        best = ttq["best_epoch"] - 1
        axes.plot([seconds[best]], [values[best]], marker="o", markersize=8,
                  color=line.get_color(), fillstyle="none")
    axes.set_xlabel("wall-clock seconds from the row's start (training + validation)")
    axes.set_ylabel(", ".join(sorted({ttq["metric"] for _, ttq in curves})))
    axes.set_title("time to quality (circle: the best validation epoch, kept)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_png(figure, path)


# Paired differences and cold-start figures of the full ranking.
PAIRED_METRICS = ("ndcg@10", "hr@10")
COLD_START_METRICS = ("ndcg@10", "hr@10", "ndcg@50", "hr@50", "mrr")


def standardized(scores: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Each row of ``scores`` minus its mean over the columns ``exclude`` leaves, over their
    standard deviation (excluded columns keep their place and are never ranked)."""
    scores = np.asarray(scores, np.float64)
    kept = ~np.asarray(exclude, bool)
    count = np.maximum(kept.sum(axis=1, keepdims=True), 1)
    mean = np.where(kept, scores, 0.0).sum(axis=1, keepdims=True) / count
    spread = np.sqrt(np.where(kept, (scores - mean) ** 2, 0.0).sum(axis=1, keepdims=True)
                     / count)
    return (scores - mean) / np.maximum(spread, 1e-12)


def _ensemble_row(spec: str, kept_logits: dict, rows: list, user_rows, rated, test, scored,
                  bootstrap: int, seed: int) -> tuple:
    """The ``--ensemble A+B`` row: every user ranks the catalogue by the mean of the
    members' standardized logits (:func:`standardized`: per user, over the items it may
    rank, so the members' different scales weigh alike; no weight is fitted, so nothing is
    tuned on the test). Sampled metrics rank the same candidates as every row.
    ``(row, per_user_sampled, per_user_full)``."""
    members = spec.split("+")
    combined = np.mean([standardized(kept_logits[m], rated) for m in members], axis=0)
    full = metrics.full_ranking_metrics(combined, user_rows.item_index, exclude=rated,
                                        ks=FULL_KS)
    per_user_full = {key: full[key] for key in FULL_METRICS}
    at = np.searchsorted(scored, test.group)
    matrix, groups = user_matrix(combined[at, test.item_index], test.label, test.group)
    assert np.array_equal(groups, scored)
    per_user = metrics.sampled_ranking_metrics(matrix, positive_index=0, ks=KS)
    per_user = {key: per_user[key] for key in METRICS}
    users = np.arange(len(scored))
    of = {row["model"]: row for row in rows}
    row = {"model": spec, **summarize(per_user, users, bootstrap, seed),
           "candidates_per_user": int(matrix.shape[1]),
           "train_seconds": round(sum(of[m].get("train_seconds") or 0.0 for m in members), 2),
           "score_seconds": round(sum(of[m].get("score_seconds") or 0.0 for m in members), 2),
           "ensemble_of": members,
           "full_ranking": {**summarize(per_user_full, users, bootstrap, seed, FULL_METRICS),
                            "candidates_per_user": _spread(full["candidates"]),
                            "pairwise": False, "users_subset": False,
                            "combination": "mean of the members' per-user standardized "
                                           "catalogue logits, equal weights"},
           "settings": {"kind": "ensemble", "members": members}, "overrides": []}
    print(f"   {spec}: hr@10 {row['hr@10']:.4f}  ndcg@10 {row['ndcg@10']:.4f}  full-ranking "
          f"ndcg@10 {row['full_ranking']['ndcg@10']:.4f} ({len(scored)} users)", flush=True)
    return row, per_user, per_user_full


def _add_paired_differences(rows: list, per_user: dict, users: int, bootstrap: int,
                            seed: int, section: str | None = "full_ranking",
                            memo: dict | None = None) -> None:
    """Each row scored for every user gets ``paired_difference`` (in ``row[section]``, or
    in the row itself for ``section=None``, the sampled protocol): for every other such
    row, the mean per-user difference (this row minus that one) of ``PAIRED_METRICS``
    with a paired bootstrap 95% interval over users (the same users, so user-to-user
    spread cancels); an interval above 0 says this row ranks better. ``memo`` keeps each
    pair's result across calls (a row's per-user values never change once it is ranked)."""
    memo = {} if memo is None else memo
    complete = [row["model"] for row in rows if row["model"] in per_user
                and np.isfinite(per_user[row["model"]]["mrr"]).sum() == users]
    for row in rows:
        if row["model"] not in complete:
            continue
        mine = per_user[row["model"]]
        pairs = {}
        for other in complete:
            if other == row["model"]:
                continue
            for key in PAIRED_METRICS:
                at = (section, row["model"], other, key)
                if at not in memo:
                    memo[at] = _paired(mine[key] - per_user[other][key], bootstrap, seed)
                pairs.setdefault(other, {})[key] = memo[at]
        (row if section is None else row[section])["paired_difference"] = pairs


def _paired(difference: np.ndarray, bootstrap: int, seed: int) -> dict:
    low, high = metrics.bootstrap_ci(difference, num_samples=bootstrap, seed=seed)
    return {"mean": float(difference.mean()), "ci95": [low, high]}


def _cold_start(rows: list, per_user_full: dict, info: dict, ids, user_rows,
                bootstrap: int, seed: int) -> dict | None:
    """With items held out of training (``data.sequences.cold_start_items``): each row's
    full-ranking ``COLD_START_METRICS`` on the test users whose target is one of them
    (``row["cold_start"]``), and the protocol's note; None without held-out items."""
    held_out = info.get("cold_start")
    if not held_out:
        return None
    index = np.array([ids.items[item] for item in held_out["items"] if item in ids.items])
    users = np.flatnonzero(np.isin(user_rows.item_index, index))
    for row in rows:
        values = per_user_full.get(row["model"])
        if values is not None and len(users) and np.isfinite(values["mrr"][users]).all():
            row["cold_start"] = summarize(values, users, bootstrap, seed, COLD_START_METRICS)
    return {"items_held_out": len(held_out["items"]),
            "share": info["settings"]["cold_start_items"],
            "train_rows_dropped": held_out["train_rows_dropped"],
            "history_entries_dropped": held_out["history_entries_dropped"],
            "test_users": int(len(users)),
            "users": "test users whose target is a held-out item (no training row holds it: "
                     "not as target, in a history or as a negative); full ranking as above"}


def _full_ranking(kind, model, packer, user_rows, full_rows, item_text, rated, logits,
                  sampled, scored, batch_size: int, pairwise: bool, args, seed: int,
                  keep: bool = False) -> dict:
    """The row's full-ranking block (with ``per_user``: the per-user metric arrays, and
    with ``keep``, ``catalogue_logits`` for an ensemble)."""
    t0 = time.time()
    catalogue_logits = kind.catalogue_logits(model, packer, user_rows.subset(full_rows),
                                             item_text, batch_size)
    seconds = time.time() - t0
    full = metrics.full_ranking_metrics(catalogue_logits, user_rows.item_index[full_rows],
                                        exclude=rated[full_rows], ks=FULL_KS)
    # The same model scored two ways must agree on the sampled candidates.
    in_full = np.isin(sampled.group, scored[full_rows])
    at = np.searchsorted(scored[full_rows], sampled.group[in_full])
    diff = np.abs(catalogue_logits[at, sampled.item_index[in_full]] - logits[in_full])
    per_user = {key: full[key] for key in FULL_METRICS}
    return {**summarize(per_user, np.arange(len(full_rows)), args.bootstrap, seed,
                        FULL_METRICS),
            "candidates_per_user": _spread(full["candidates"]),
            "score_seconds": round(seconds, 2),
            "pairwise": bool(pairwise),
            "users_subset": bool(len(full_rows) < len(scored)),
            "max_abs_logit_diff_vs_sampled": float(np.max(diff, initial=0.0)),
            "per_user": per_user, **({"catalogue_logits": catalogue_logits} if keep else {})}


def _retrieve_stage(kind, model, packer, item_text, stage_users: dict, n: int,
                    batch_size: int) -> dict:
    """The retriever's top ``n`` never-rated items per user (its held-out item kept) for
    each split of ``stage_users`` (``{split: (one row per user, rated mask)}``)."""
    out = {}
    for split, (users, rated) in stage_users.items():
        t0 = time.time()
        logits = kind.catalogue_logits(model, packer, users, item_text, batch_size)
        # Never more candidates than the user with the fewest unrated items has.
        available = int((~rated[:, 1:]).sum(axis=1).min()) + 1
        items, item_logits = top_candidates(logits, rated, users.item_index,
                                            max(1, min(n, available)))
        out[split] = {"users": users, "positive": users.item_index, "items": items,
                      "logits": item_logits, "seconds": time.time() - t0}
    return out


def _hard_negative_table(kind, model, packer, train, train_users, cfg, ids, item_text, args,
                         seed: int, batch_size: int):
    """bert_rerank's training rows: a seeded subset of ``--rerank_train_positives`` whole
    training impressions in which ``--rerank_hard_negatives`` of each positive's uniform
    negatives are replaced by items drawn from the retriever's top ``--rerank_candidates``
    for that user state (items the user never rated), so the reranker learns to tell
    apart the items it will be handed."""
    positives = np.flatnonzero(train.label > 0)
    rng = np.random.default_rng([seed, 5])
    if 0 < args.rerank_train_positives < len(positives):
        positives = np.sort(rng.choice(positives, args.rerank_train_positives,
                                       replace=False))
    users, user_code = np.unique(train_users[positives], return_inverse=True)
    rated = _rated_mask(cfg, ids, users)
    hard = args.rerank_hard_negatives
    t0 = time.time()
    drawn = np.zeros([len(positives), hard], np.int32)
    for start in range(0, len(positives), 4096):
        chunk = slice(start, start + 4096)
        rows = train.subset(positives[chunk])
        mask = rated[user_code[chunk]]
        available = int((~mask[:, 1:]).sum(axis=1).min())
        n = max(hard, min(args.rerank_candidates, available))
        logits = kind.catalogue_logits(model, packer, rows, item_text, batch_size)
        # positive 0 ("no item", always blocked): the positive is rated, so never drawn
        items, _ = top_candidates(logits, mask, np.zeros(len(rows), np.int64), n)
        pick = np.argsort(rng.random(items.shape), axis=1)[:, :hard]
        drawn[chunk] = np.take_along_axis(items, pick, axis=1)
    # The impressions' first (negatives - hard) uniform negatives stay.
    groups = train.group[positives]
    negatives = np.flatnonzero(np.isin(train.group, groups) & (train.label <= 0))
    negatives = negatives[np.argsort(train.group[negatives], kind="stable")]
    starts = np.searchsorted(train.group[negatives], train.group[negatives], side="left")
    keep_uniform = max(0, _source_settings(cfg).negatives_per_positive - hard)
    uniform = negatives[np.arange(len(negatives)) - starts < keep_uniform]
    hard_rows = train.subset(np.repeat(positives, hard))
    hard_rows.item_index = drawn.reshape(-1)
    hard_rows.item_text = np.asarray(item_text, dtype=object)[hard_rows.item_index]
    hard_rows.label = np.zeros(len(hard_rows.item_index), np.float32)
    table = type(train).concat([train.subset(positives), train.subset(uniform), hard_rows])
    # Each impression's rows together, as in the loader's tables: the shuffle buffer is
    # smaller than the table, so blocks of positives / negatives would reach the model in
    # turn (an epoch of negatives only).
    table = table.subset(np.argsort(table.group, kind="stable"))
    print(f"   bert_rerank: {len(positives)} training positives, {hard} retrieved + "
          f"{keep_uniform} uniform negatives each ({time.time() - t0:.1f} s)", flush=True)
    return table


def _rerank_stage(kind, model, packer, retrieved: dict, item_text, batch_size: int, args,
                  seed: int) -> dict:
    """A reranker row's ``retrieve_rerank`` block: the retriever alone, this model alone
    and the fusion ``rerank + w * retrieval`` (w chosen by validation nDCG@10 over
    ``FUSION_WEIGHTS``) on the same retrieved candidates, with paired differences."""
    rerank, seconds = {}, {}
    for split, stage in retrieved.items():
        t0 = time.time()
        rerank[split] = kind.candidate_logits(model, packer, stage["users"], stage["items"],
                                              item_text, batch_size)
        seconds[split] = time.time() - t0
    val = retrieved["validation"]
    by_weight = {w: float(candidate_ranking_metrics(
        val["items"], rerank["validation"] + w * val["logits"], val["positive"])[
            "ndcg@10"].mean()) for w in FUSION_WEIGHTS}
    weight = FUSION_WEIGHTS[int(np.argmax([by_weight[w] for w in FUSION_WEIGHTS]))]
    test = retrieved["test"]
    per_user = {
        "retrieval": candidate_ranking_metrics(test["items"], test["logits"],
                                               test["positive"]),
        "rerank": candidate_ranking_metrics(test["items"], rerank["test"], test["positive"]),
        "fused": candidate_ranking_metrics(test["items"], rerank["test"]
                                           + weight * test["logits"], test["positive"])}
    users = np.arange(len(test["items"]))
    block = {"retriever": RETRIEVER, "candidates": int(test["items"].shape[1]),
             "recall@candidates": float(per_user["retrieval"]["retrieved"].mean()),
             "retrieval_weight": weight,
             "validation_ndcg@10_by_weight": {str(w): round(v, 5)
                                              for w, v in by_weight.items()},
             "seconds_per_user": {
                 "retrieve": round(test["seconds"] / len(users), 5),
                 "rerank": round(seconds["test"] / len(users), 5)}}
    for stage, values in per_user.items():
        block[stage] = summarize(values, users, args.bootstrap, seed, RERANK_METRICS)
        if stage != "retrieval":
            block[stage]["difference_vs_retrieval"] = {}
            for key in RERANK_METRICS:
                diff = values[key] - per_user["retrieval"][key]
                low, high = metrics.bootstrap_ci(diff, num_samples=args.bootstrap, seed=seed)
                block[stage]["difference_vs_retrieval"][key] = {
                    "mean": float(diff.mean()), "ci95": [low, high]}
    return block


def format_published_table(name: str, rows: list) -> str:
    """Our rows' full-ranking Recall/NDCG@10/50 (95% CIs on the @10 figures) under the
    figures published on the same files (:data:`PUBLISHED`), labelled as published."""
    head = (f"{'model':<32}{'reads':<22}{'R@10':>8}{'N@10 [95% CI]':>25}{'R@50':>8}"
            f"{'N@50':>8}  source")
    lines = [head, "-" * len(head)]
    for row in rows:
        full = row.get("full_ranking", {})
        if "ndcg@10" not in full or full.get("users_subset"):
            continue
        low, high = full["ci95"]["ndcg@10"]
        lines.append(f"{row['model']:<32}{'(this run)':<22}{full['hr@10']:>8.4f}"
                     f"{full['ndcg@10']:>9.4f} [{low:.4f}, {high:.4f}]"
                     f"{full['hr@50']:>8.4f}{full['ndcg@50']:>8.4f}  measured here")
    for model, reads, r10, n10, r50, n50, source in PUBLISHED[name]:
        lines.append(f"{model + ' (published)':<32}{reads:<22}{r10:>8.4f}{n10:>25.4f}"
                     f"{r50:>8.4f}{n50:>8.4f}  {source}")
    return "\n".join(lines)


def format_rerank_table(rows: list) -> str:
    """Fixed-width table of the rows' ``retrieve_rerank`` blocks."""
    head = (f"{'stage':<26}{'hr@10':>8}{'ndcg@10 [95% CI]':>26}"
            f"{'minus retrieval [95% CI]':>30}{'s/user':>9}")
    lines = [head, "-" * len(head)]
    blocks = [(row["model"], row["retrieve_rerank"]) for row in rows
              if "retrieve_rerank" in row]
    for position, (model, block) in enumerate(blocks):
        stages = (["retrieval"] if position == 0 else []) + ["rerank", "fused"]
        for stage in stages:
            values = block[stage]
            low, high = values["ci95"]["ndcg@10"]
            name = {"retrieval": f"{block['retriever']} alone",
                    "rerank": f"-> {model}",
                    "fused": f"-> {model} + {block['retrieval_weight']:g} x ret."}[stage]
            diff = values.get("difference_vs_retrieval", {}).get("ndcg@10")
            diff_text = "" if diff is None else \
                f"{diff['mean']:+.4f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]"
            cost = block["seconds_per_user"]["retrieve"] + (
                0.0 if stage == "retrieval" else block["seconds_per_user"]["rerank"])
            ndcg = f"{values['ndcg@10']:.4f} [{low:.3f}, {high:.3f}]"
            lines.append(f"{name:<26}{values['hr@10']:>8.4f}{ndcg:>26}{diff_text:>30}"
                         f"{cost:>9.4f}")
    return "\n".join(lines)


def _spread(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"min": 0, "mean": float("nan"), "max": 0}
    return {"min": int(values.min()), "mean": round(float(values.mean()), 1),
            "max": int(values.max())}


def _settings(cfg, fitted: dict, tables: dict, model) -> dict:
    from trainer import kinds

    m, t = cfg.model, cfg.train
    settings = {"kind": m.kind, "train_examples": len(tables["train"]),
                "validation_examples": len(tables["validation"]),
                "epochs": t.epochs, "epochs_run": fitted["epochs_run"],
                "steps_per_epoch": fitted["steps_per_epoch"], "batch_size": t.batch_size,
                "learning_rate": t.learning_rate, "weight_decay": t.weight_decay,
                "parameters": int(model.count_params())}
    settings.update(kinds.for_config(cfg).benchmark_settings(cfg))
    monitor = f"val_{t.early_stopping_metric}"
    if fitted["history"].get(monitor):
        settings["early_stopping_metric"] = t.early_stopping_metric
        settings[f"best_{monitor}"] = max(fitted["history"][monitor])
        settings["best_epoch"] = int(np.argmax(fitted["history"][monitor])) + 1
    return settings


if __name__ == "__main__":
    sys.exit(main())
