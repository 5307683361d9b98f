"""``python -m trainer.task recommend``: the top k catalogue items for a user, from a
two-tower run's saved item index (trainer/serving/retrieval.py), optionally reranked.

A user is a query ("" for none) and a history of catalogue item ids, most recent first.
The history's texts come from the run's catalogue; the user state is computed by the
trained model and scored against every cached item vector as ``score_matrix`` scores it
(every query's inner products, ``retrieval.catalogue_scores``), or, with ``approximate``,
against the candidates an HNSW index proposes (``retrieval.ApproximateIndex``, rescored
exactly); items in the history are not recommended again.

:class:`RetrieveRerank` (``recommend --pipeline configs/retrieve_rerank.yaml``) is the
two-stage recommender: the two-tower run retrieves the top ``retrieve.candidates`` items,
a second run (a cross-encoder, or any trained model) scores each retrieved pair, and the
top k of ``rerank logit + rerank.retrieval_weight * retrieval logit`` come back.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from trainer import config as config_lib
from trainer.data import input_pipeline
from trainer import kinds, runs
from trainer.kinds.item_index import ITEM_INDEX_DIR
from trainer.serving import retrieval
from trainer.data.canonical import Example
from trainer.errors import UserInputError

# What `recommend --explain` computes for each item: word attributions, and the history
# items' leave-one-out and Shapley values (which also guide the verified counterfactual).
EXPLAIN_METHODS = ("integrated_gradients", "leave_one_out", "shapley")


def _sigmoid(z) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


class Recommender:
    """A loaded two-tower run: ``recommend(queries, histories, k)``.

    Args:
      model_dir: a finished two-tower run (``model.keras``, ``item_index/``).
      approximate: propose candidates with an HNSW index (faiss-cpu and numba, the ``ann``
        extra), walked once per user under its own logit, instead of scoring the whole
        catalogue: for catalogues of ~10^5 items and more. The graph is saved under the
        run's ``item_index/`` when it is built and read back by later recommenders of the
        same run (a local run directory only).
      neighbours, ef_search: the index's HNSW M and search beam
        (``retrieval.ApproximateIndex``; M 64 and efSearch 512 reached recall@100 0.99
        at a million items, docs/benchmarks.md).
    """

    def __init__(self, model_dir: str, approximate: bool = False,
                 neighbours: int = retrieval.ApproximateIndex.NEIGHBOURS,
                 ef_search: int = retrieval.ApproximateIndex.EF_SEARCH):
        self.run = run = runs.open_run(model_dir)
        if not run.kind.retrieves:
            raise UserInputError(
                f"{model_dir}: recommend needs a run with an item index (model.kind="
                f"{' / '.join(kinds.names_with('retrieves'))}); "
                f"this run trained model.kind={run.kind.name}: rerank with it through "
                "--pipeline instead")
        self.cfg, self.index, self.model = run.cfg, run.item_index, run.model
        self.featurizer = run.featurizer
        self.position = {item: i for i, item in enumerate(self.index.item_ids)}
        self.retrieval_vectors = np.asarray(
            self.model.retrieval_vectors(self.index.vectors, self.index.id_index), np.float32)
        self.approximate_index = None
        if approximate:
            local = "://" not in model_dir  # faiss reads and writes local files only
            self.approximate_index = retrieval.ApproximateIndex(
                self.retrieval_vectors, neighbours=neighbours, ef_search=ef_search,
                cache_dir=os.path.join(model_dir, ITEM_INDEX_DIR) if local else None)

    def retrieve(self, queries: list, histories: list, k: int,
                 exclude_seen: bool = True) -> tuple:
        """``(positions [users, k], logits [users, k])`` of the best items, best first;
        positions index ``self.index.item_ids``.

        ``histories`` holds catalogue item ids per user, most recent first; an id the
        catalogue does not hold is refused (naming it) before anything is scored."""
        user_queries, present, exclude = self.user_queries(queries, histories)
        exclude = exclude if exclude_seen else None
        offset = float(self.model.global_bias)
        if self.approximate_index is not None:
            return self.approximate_index.search(user_queries, present, k, offset, exclude)
        return retrieval.top_k(retrieval.catalogue_scores(user_queries, present,
                                                          self.retrieval_vectors, offset),
                               k, exclude)

    def user_queries(self, queries: list, histories: list) -> tuple:
        """``(queries [users, K, d + 1], present [users, K], seen)``: each user's
        inner-product queries against ``self.retrieval_vectors``
        (``TwoTowerRecommender.retrieval_queries``) and the index positions of their
        history items. Arguments as :meth:`retrieve`."""
        if len(queries) != len(histories):
            raise UserInputError(f"{len(queries)} queries but {len(histories)} histories")
        width = max(1, max((len(h) for h in histories), default=1))
        texts = np.full([len(histories), width], "", dtype=object)
        ids = np.full([len(histories), width], "", dtype=object)
        seen = []
        for row, history in enumerate(histories):
            for col, item in enumerate(history):
                if item not in self.position:
                    raise UserInputError(f"history item {item!r} is not in the run's "
                                         f"catalogue ({len(self.index)} items)")
                ids[row, col] = item
                texts[row, col] = self.featurizer.item_texts[self.position[item] + 1]
            seen.append([self.position[item] for item in history])
        empty = tf.fill([len(queries)], "")
        x = self.featurizer.from_text(tf.constant(list(queries), tf.string),
                                      tf.constant(texts.astype(str)), empty,
                                      history_ids=tf.constant(ids.astype(str)),
                                      item_ids=empty)
        state = self.model.user_state(x, training=False)
        user_queries, present = (np.asarray(t) for t in self.model.retrieval_queries(state))
        return user_queries, present, seen

    def explain(self, query: str, history: list, item_ids: list, **options) -> list:
        """One explanation record per recommended item (:func:`explain_items`)."""
        return explain_items(self.cfg, self.model, self.featurizer, self.run.catalogue, query,
                             history, item_ids, **options)

    def recommend(self, queries: list, histories: list, k: int = 10,
                  exclude_seen: bool = True) -> list:
        """One list per user of ``{"item_id", "logit", "click_probability"}``, best first
        (``histories``: catalogue item ids per user, most recent first)."""
        positions, logits = self.retrieve(queries, histories, k, exclude_seen)
        return [[{"item_id": self.index.item_ids[p], "logit": float(z),
                  "click_probability": float(_sigmoid(z))}
                 for p, z in zip(row_positions, row_logits)]
                for row_positions, row_logits in zip(positions, logits)]


class RetrieveRerank:
    """Retrieve -> rerank: ``recommend(queries, histories, k)`` as :class:`Recommender`,
    with each item's ``retrieval_logit``, ``rerank_logit`` and the ``score`` it is ranked
    by; ``click_probability`` is the reranker's.

    Args:
      pipeline: a :class:`trainer.config.PipelineConfig` (``config.load_pipeline``). The
        reranker's catalogue must hold every item the retriever can return (train both
        stages on the same data); that is checked when it loads.
    """

    def __init__(self, pipeline: config_lib.PipelineConfig):
        self.pipeline = pipeline
        self.retriever = Recommender(pipeline.retrieve.model_dir)
        rerank_dir = pipeline.rerank.model_dir
        run = runs.open_run(rerank_dir)
        missing = [item for item in self.retriever.index.item_ids
                   if item not in run.catalogue]
        if missing:
            raise UserInputError(
                f"rerank.model_dir {rerank_dir}: its catalogue lacks {len(missing)} of the "
                f"{len(self.retriever.index)} items the retriever "
                f"({pipeline.retrieve.model_dir}) can return, e.g. {missing[:3]}; train both "
                "stages on the same data")
        self.cfg, self.ids, self.catalogue = run.cfg, run.ids, run.catalogue
        self.kind, self.model, self.featurizer = run.kind, run.model, run.featurizer
        self.item_text = np.asarray(self.ids.item_texts(self.catalogue,
                                                        self.cfg.data.item_text_fields),
                                    dtype=object)

    def explain(self, query: str, history: list, item_ids: list, **options) -> list:
        """Explanations of the reranker's scores of ``item_ids`` (:func:`explain_items`);
        with ``rerank.retrieval_weight`` > 0 they explain the reranker's part of the score."""
        return explain_items(self.cfg, self.model, self.featurizer, self.catalogue, query,
                             history, item_ids, **options)

    def user_rows(self, queries: list, histories: list) -> input_pipeline.PairTable:
        """One reranker input row per user (its candidate columns are placeholders)."""
        examples = [Example(user_id="", impression_id=str(row), history=tuple(history[::-1]),
                            candidate=self.retriever.index.item_ids[0], label=0,
                            query=query)
                    for row, (query, history) in enumerate(zip(queries, histories))]
        return input_pipeline.make_pair_table(examples, self.catalogue,
                                              self.cfg.data.item_text_fields,
                                              self.cfg.data.max_history, self.ids)

    def recommend(self, queries: list, histories: list, k: int | None = None,
                  exclude_seen: bool = True) -> list:
        """One list per user of ``{"item_id", "score", "retrieval_logit",
        "rerank_logit", "click_probability"}``, best first."""
        k = self.pipeline.k if k is None else k
        n = self.pipeline.retrieve.candidates
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
            raise UserInputError(f"k must be in [1, retrieve.candidates = {n}], got {k!r}")
        positions, retrieval_logits = self.retriever.retrieve(
            queries, histories, min(n, len(self.retriever.index)), exclude_seen)
        item_ids = np.asarray(self.retriever.index.item_ids, dtype=object)[positions]
        candidates = np.vectorize(self.ids.items.get, otypes=[np.int32])(item_ids)
        rerank_logits = self.kind.candidate_logits(
            self.model, self.featurizer, self.user_rows(queries, histories), candidates,
            self.item_text, self.cfg.train.eval_batch_size)
        _, scores, order = retrieval.fuse_and_rank(
            candidates, retrieval_logits, rerank_logits, min(k, candidates.shape[1]),
            self.pipeline.rerank.retrieval_weight)
        out = []
        for row in range(len(queries)):
            out.append([{"item_id": str(item_ids[row, col]), "score": float(score),
                         "retrieval_logit": float(retrieval_logits[row, col]),
                         "rerank_logit": float(rerank_logits[row, col]),
                         "click_probability": float(_sigmoid(rerank_logits[row, col]))}
                        for col, score in zip(order[row], scores[row])])
        return out


def explain_items(cfg, model, featurizer, catalogue, query: str, history: list,
                  item_ids: list, methods=EXPLAIN_METHODS, shapley_permutations: int = 16,
                  seed: int = 0) -> list:
    """Explains why a text model scored each of ``item_ids`` for one user (``history``:
    item ids, most recent first): word attributions (integrated gradients), which history
    items drove the score (leave-one-out and sampled Shapley), a counterfactual verified by
    re-scoring, and a sentence (explainability.explainer records). The recommended list is
    the impression: a rank is the item's rank among ``item_ids`` under this model."""
    from bert_recommender.explainability.explainer import ExplainOptions, Explainer
    from trainer.responsible.explain_lib import make_case

    kind = kinds.for_config(cfg)
    try:
        scorer, compose = kind.explanation_scorer(cfg, model, featurizer)
    except ValueError as err:
        raise UserInputError(f"--explain: {err}") from None
    explainer = Explainer(scorer, compose, ExplainOptions(
        methods=tuple(methods), shapley_permutations=shapley_permutations, seed=seed))
    examples = [Example(user_id="", impression_id="recommend", history=tuple(history[::-1]),
                        candidate=item, label=0, query=query) for item in item_ids]
    reads_item_text = getattr(scorer, "history_reads_item_text", False)
    records = []
    for index, example in enumerate(examples):
        case = make_case(example, examples, catalogue, cfg, index, reads_item_text)
        records.append(explainer.explain(case, index)[0])
    return records
