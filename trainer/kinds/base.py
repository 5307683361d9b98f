"""How a model family plugs into the rest of the code (TF Model Garden's ``Task``).

A :class:`ModelKind` answers every question the training library, evaluation, export,
retrieval, explanation and the benchmarks ask about a model family: which inputs it needs
(its *featurizer*: the object that turns table columns or raw strings into the int
tensors the model reads), how it is built and checked, which rows it learns from, how it
scores a whole catalogue, what it serves and how it is explained. Nothing outside
``trainer/kinds/`` branches on a kind or on a model or featurizer class.

=============  =====================================  ======================================
kind           featurizer                             model
=============  =====================================  ======================================
two_tower      TwoTowerFeatures (text + ids)          models.two_tower.TwoTowerRecommender
sasrec         TwoTowerFeatures (ids only)            TwoTowerRecommender, no text
cross_encoder  models.layers.TextPairPacker           models.bert_recommender.BERTRecommender
glass_box      GlassBoxFeatures (words)               models.glass_box.GlassBoxRecommender
mf             None (ids)                             models.baselines.MatrixFactorization
popularity     None (ids)                             models.baselines.MostPopular
=============  =====================================  ======================================
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf

from trainer.data import input_pipeline
from trainer.errors import ConfigError
from trainer.kind_registry import names_with
from trainer.kinds import endpoints


# Validation from the catalogue holds a [groups, items] float32 matrix: at most 512 MB.
CATALOGUE_GROUPING_MAX_SCORES = 2 ** 27


class ModelKind:
    """One model family's answers; subclasses register with ``@trainer.kind_registry.register``."""

    name = ""  # set by @register
    #: one line the benchmarks print beside the kind's rows
    description = ""
    #: reads text: needs a tokenizer (a vocabulary is learned for random init)
    uses_text = False
    #: reads words ``explain`` can attribute to (a text model, or frozen text vectors
    #: whose checkpoint re-encodes the edited words)
    explains_words = False
    #: user and item vectors are separate: in-batch softmax training (train.loss=softmax)
    #: is possible and the user side needs a history (data.max_history > 0)
    separate_towers = False
    #: scores a whole catalogue from per-item vectors computed once (item tower outputs,
    #: embedding rows, counts), not one forward pass per (user, item) pair
    scores_catalogue_from_item_vectors = False
    #: saves an item index with each run (item_index/): `recommend` and the export's
    #: ``retrieve`` signature
    retrieves = False
    #: its parameters are counted from the clicks, not learned by gradient steps
    counted = False
    #: its logit is an exact sum of named contributions (words, item features): a
    #: distilled student of this kind explains its teacher's words
    exact_contributions = False
    #: ``--set`` overrides of its default row in benchmarks/quality.py (after
    #: ``model.kind=<name>``; kinds without separate towers also train with bce there);
    #: None: no default row
    benchmark_overrides = None

    # -- configuration ------------------------------------------------------------------

    def check_config(self, cfg) -> None:
        """Raises ConfigError for settings this kind cannot train with (checked whenever
        the kind is looked up, before anything is written)."""
        if cfg.train.early_stopping_metric.startswith("full_") and \
                not self.scores_catalogue_from_item_vectors:
            raise ConfigError(
                f"config key 'train.early_stopping_metric': "
                f"{cfg.train.early_stopping_metric} ranks the whole catalogue each epoch, "
                f"which model.kind={self.name} can only do one (user, item) pair at a time; "
                "use ndcg@10 (the sampled validation candidates)")
        if cfg.train.loss in ("softmax", "full_softmax") and not self.separate_towers:
            raise ConfigError(
                f"config key 'train.loss': {cfg.train.loss} needs a model with separate user "
                f"and item vectors (model.kind={' / '.join(names_with('separate_towers'))}); "
                f"model.kind={self.name} trains with bce")
        if cfg.train.privacy.enabled and self.counted:
            raise ConfigError(f"config key 'train.privacy.enabled': model.kind={self.name} "
                              "is counted from the clicks, not trained by gradients")

    def benchmark_settings(self, cfg) -> dict:
        """The settings ``benchmarks.quality`` prints beside this kind's row."""
        return {}

    # -- data and model -----------------------------------------------------------------

    def featurizer(self, cfg, vocabulary, catalogue, ids: input_pipeline.IdVocabulary,
                   cache_dir: str | None = None):
        """What ``input_pipeline.make_dataset(packer=...)`` and the export feed the model
        with (None: the id columns alone). ``cache_dir`` (the run directory, or a
        benchmark's output) is where a kind may cache what it computes once from the
        catalogue (frozen text vectors)."""
        return None

    def featurizer_settings(self, featurizer) -> dict:
        """What building ``featurizer`` cost or chose that a benchmark row records (a
        frozen two-tower's one-time text encoding); {} for most kinds."""
        return {}

    def learns_vocabulary(self, cfg) -> bool:
        """Whether a run learns a WordPiece vocabulary from its catalogue (a text kind from
        random init; a pretrained checkpoint brings its own)."""
        return self.uses_text and not cfg.model.pretrained

    def featurizer_state(self, featurizer) -> dict | None:
        """What :meth:`load_featurizer` needs beyond the config and the vocabulary, as
        JSON-able values (saved with the run as ``featurizer.json``); None: nothing."""
        return None

    def load_featurizer(self, cfg, vocabulary, state: dict | None):
        """A finished run's featurizer from its config, its vocabulary (the run's
        ``vocab.txt``; None for a pretrained or id-only kind) and
        :meth:`featurizer_state`, without reading the data again."""
        return self.featurizer(cfg, vocabulary, None, None)

    def build(self, cfg, featurizer, ids: input_pipeline.IdVocabulary,
              train_table) -> keras.Model:
        """The model (call inside ``strategy.scope()``)."""
        raise NotImplementedError

    def dummy_batch(self, featurizer) -> dict:
        """A one-row batch that builds the model's weights."""
        return {"user_index": tf.zeros([1], tf.int32), "item_index": tf.zeros([1], tf.int32)}

    def training_rows(self, cfg, table):
        """The rows the model fits on (all of them, except for the in-batch softmax)."""
        return table

    def fit_counts(self, model: keras.Model, table) -> None:
        """Sets anything counted from the training rows rather than learned."""

    def unpinned_shapes(self, model: keras.Model):
        """A context in which ``model`` runs with static shapes only (for per-example
        gradients under pfor and for FLOP counting); nothing to change by default."""
        return contextlib.nullcontext()

    # -- scoring ------------------------------------------------------------------------

    def catalogue_logits(self, model: keras.Model, featurizer, user_rows, item_text,
                         batch_size: int) -> np.ndarray:
        """Logits of every user in ``user_rows`` (a ``PairTable``, one row per user: its
        user/history/query columns are read, its candidate ignored) against every
        catalogue item: float32 ``[users, N + 1]``, column = ``IdVocabulary.items`` index
        (column 0, "no item", is left at 0 and means nothing).

        ``item_text`` holds the N + 1 item texts (entry 0 ""), index-aligned the same way.
        This generic version scores every (user, item) pair through ``model.predict`` as
        training's evaluation does: right for any model, but N forward passes per user
        (a cross-encoder has no cheaper way). Kinds with separable scores override it.
        """
        num = len(item_text)
        out = np.zeros([len(user_rows), num], np.float32)
        if num <= 1 or not len(user_rows):
            return out
        items = np.arange(1, num, dtype=np.int32)
        out[:, 1:] = self.candidate_logits(model, featurizer, user_rows,
                                           np.broadcast_to(items, (len(user_rows), num - 1)),
                                           item_text, batch_size)
        return out

    def candidate_logits(self, model: keras.Model, featurizer, user_rows, candidates,
                         item_text, batch_size: int) -> np.ndarray:
        """Logits of each user in ``user_rows`` (one row per user, as in
        :meth:`catalogue_logits`) against its own candidates: ``candidates`` int
        ``[users, n]`` of ``IdVocabulary.items`` indices -> float32 ``[users, n]``.

        What a reranking stage runs on a retrieval stage's top n. Every (user, candidate)
        pair goes through ``model.predict`` on the same input pipeline as evaluation, so
        it is right for every kind."""
        candidates = np.asarray(candidates, np.int32)
        users, n = candidates.shape
        out = np.zeros([users, n], np.float32)
        if not users or not n:
            return out
        texts = np.asarray(item_text, dtype=object)
        users_per_call = max(1, 65536 // n)  # bounds the pair table's size
        for start in range(0, users, users_per_call):
            rows = np.arange(start, min(start + users_per_call, users))
            pairs = user_rows.subset(np.repeat(rows, n))
            pairs.item_index = candidates[rows].reshape(-1)
            pairs.item_text = texts[pairs.item_index]
            pairs.label = np.zeros(len(pairs.item_index), np.float32)
            data = input_pipeline.make_dataset(pairs, batch_size, packer=featurizer,
                                               with_labels=False)
            logits = np.asarray(model.predict(data, verbose=0), np.float32)
            out[rows] = logits.reshape(len(rows), n)
        return out

    def catalogue_grouping(self, table, item_text) -> tuple | None:
        """How :meth:`table_logits_from_catalogue` scores ``table``: ``(users, position,
        candidate)``, one row per group (``table.group``), each row's group and each row's
        candidate index; or None where scoring from the catalogue would not give the same
        logits as a pass over the rows, or would not be cheaper: a kind without separable
        scores, a catalogue larger than the table, more groups x items than
        :data:`CATALOGUE_GROUPING_MAX_SCORES` (e.g. MIND's impressions against its news),
        a candidate outside the catalogue or with another text than its catalogue entry,
        or a group whose rows differ on the user side."""
        if not self.scores_catalogue_from_item_vectors or item_text is None or not len(table):
            return None
        texts = np.asarray(item_text, dtype=object)
        candidate = np.asarray(table.item_index, np.int64)
        if len(texts) > len(table) or candidate.min() < 1 or candidate.max() >= len(texts) \
                or not np.array_equal(texts[candidate],
                                      np.asarray(table.item_text, dtype=object)):
            return None
        _, first, position = np.unique(np.asarray(table.group), return_index=True,
                                       return_inverse=True)
        if len(first) * len(texts) > CATALOGUE_GROUPING_MAX_SCORES:
            return None  # the [groups, catalogue] logits would not fit in memory
        users = table.subset(first)
        for column in ("user_index", "history_index", "query", "user_text"):
            values = getattr(table, column)
            if values is not None and not np.array_equal(
                    np.asarray(values), np.asarray(getattr(users, column))[position]):
                return None
        return users, position, candidate

    def table_logits_from_catalogue(self, model: keras.Model, featurizer, grouping,
                                    item_text, batch_size: int) -> np.ndarray:
        """Every row's logit of a table from :meth:`catalogue_logits`: one user state per
        group against item vectors computed once, gathered at each row's candidate
        (``grouping`` from :meth:`catalogue_grouping`). What per-epoch validation runs
        instead of one forward pass per row: an NCF-protocol validation split holds 100
        rows per user, each with the user's history, so a pass over the rows encodes each
        history ~100 times (on ml-latest-small the two-tower's pass took 12-20 s an epoch;
        this takes about 6 s)."""
        users, position, candidate = grouping
        logits = self.catalogue_logits(model, featurizer, users,
                                       np.asarray(item_text, dtype=object), batch_size)
        return np.asarray(logits[position, candidate], np.float32)

    def item_index(self, model: keras.Model, featurizer, batch_size: int):
        """The run's :class:`~trainer.kinds.item_index.ItemIndex` (every catalogue item's
        cached vector), or None for kinds that do not retrieve."""
        return None

    def item_embeddings(self, model: keras.Model, featurizer, item_ids: list, catalogue,
                        ids: input_pipeline.IdVocabulary, item_text_fields: list,
                        item_index=None, batch_size: int = 64):
        """``(item_ids kept, vectors [n, d], description)`` for the TensorBoard projector,
        or None when the kind has no per-item vector to show."""
        return None

    # -- explanation --------------------------------------------------------------------

    def explanation_scorer(self, cfg, model: keras.Model, featurizer) -> tuple:
        """``(scorer, compose)`` through which ``explainability`` reads the model: the
        scorer edits and re-scores packed rows, ``compose(query, texts oldest first)``
        writes the user side it packs. Kinds without text have no words to explain."""
        raise ValueError(f"model.kind={self.name} reads no words to explain; explain a "
                          f"text model (model.kind={' / '.join(names_with('explains_words'))})")

    # -- serving ------------------------------------------------------------------------

    def add_serving_endpoints(self, archive: keras.export.ExportArchive, model: keras.Model,
                              featurizer, item_index=None) -> None:
        """The raw-input signatures of ``export/`` (trainer/serving/export.py). Id models
        serve ``user_index``/``item_index`` int32 ids."""
        def serve_ids(user_index, item_index):
            return endpoints.outputs(model({"user_index": user_index,
                                            "item_index": item_index}, training=False))

        archive.add_endpoint(
            "serving_default", serve_ids,
            input_signature=[tf.TensorSpec([None], tf.int32, name="user_index"),
                             tf.TensorSpec([None], tf.int32, name="item_index")])

    def serving_request(self, featurizer, table) -> dict:
        """The ``serving_default`` inputs of ``export/`` for the rows of ``table`` (a
        ``PairTable``): what a client sends to score those pairs (id models: the id
        indices)."""
        return {"user_index": tf.constant(table.user_index, tf.int32),
                "item_index": tf.constant(table.item_index, tf.int32)}

    def add_token_endpoints(self, archive: keras.export.ExportArchive, model: keras.Model,
                            featurizer, item_index=None):
        """The token-id signatures of ``export_tokens/``: returns ``(tokenizer, contract)``,
        or None when the kind has no tf-text op to leave out (no ``export_tokens/``)."""
        return None

    def token_request(self, featurizer, **raw_inputs) -> dict:
        """The ``export_tokens`` inputs for the raw-string export's inputs."""
        raise ValueError(f"model.kind={self.name} has no token-id export")
