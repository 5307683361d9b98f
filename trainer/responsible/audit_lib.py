"""``python -m trainer.task audit``: who gets exposure, which users are served worse, and
how far a model's scores lean towards some providers, for a finished run and the
popularity baseline (and any ``--compare`` runs on the same data) side by side.

For each scorer the split's impressions are ranked by score (or, with ``--catalogue``,
each user's whole catalogue less their history, for kinds with separable scores) and
measured (trainer/responsible/fairness.py):

* popularity bias of each impression's top k: ARP, APLT (long tail = outside the 20% most
  clicked catalogue items), catalogue coverage, Gini of item exposure, and the lift of
  the recommendations' popularity over the users' own histories;
* item-group exposure (``1 / log2(1 + rank)`` down to rank k) against merit, per group
  (the items' ``provider``, or their first category when they have none): merit is each
  candidate's expected clicks, from the data's true relevance where it records one
  (synthetic data: ``true_relevance``, else ``true_probability``), else from the logged
  clicks themselves (``--merit`` picks);
* with a true relevance, each item group's *log-odds skew*: how many log-odds the logged
  clicks, and each model's click probabilities, sit above what relevance explains
  (``fairness.log_odds_shift``; 0 = none). A provider favoured by
  ``data.synthetic.provider_bias`` shows its size in the data and in a model that learnt it;
* user-group gaps: AUC, nDCG@k and ECE per activity quartile of training clicks (and per
  value of ``--user_column``, an impressions column such as an age band), through
  fairlearn's ``MetricFrame``.

``--sweep`` runs the exposure-aware reranker (:func:`fairness.popularity_rerank`) over its
weight on the audited run's lists and reports the nDCG@k / APLT / exposure trade-off.

Intervals are 95% percentile bootstraps over impressions or users (``--bootstrap``
resamples).
Writes ``<model_dir>/audit/`` (trainer/responsible/audit_report.py): ``audit.json``, PNG plots and a
self-contained ``report.html``, all or nothing (bad input is refused before anything is
written).
"""

from __future__ import annotations

import os

import numpy as np

from bert_recommender.models.baselines import MostPopular
from trainer.responsible import audit_report, fairness
from trainer.evaluation import metrics
from trainer import kinds, runs
from trainer.evaluation import scoring
from trainer.errors import UserInputError


MERIT_SOURCES = ("auto", "true", "clicks", "predicted")
ITEM_GROUPS = ("provider", "category")
NO_GROUP = "(none)"


class AuditError(UserInputError):
    """Bad audit arguments (split, k, a column), reported before anything is written."""


def _sigmoid(logits) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))


def item_groups(catalogue, ids, by: str = "provider") -> tuple[np.ndarray, list]:
    """``(group index per item index (-1 = none), group names)``: the items' provider, or
    with ``by="category"`` (or items without a provider) their first category."""
    if by not in ITEM_GROUPS:
        raise AuditError(f"--item_group {by!r}: use one of {', '.join(ITEM_GROUPS)}")
    names: dict = {}
    index = np.full(len(ids.items) + 1, -1, dtype=np.int64)
    for item_id, position in ids.items.items():
        item = catalogue[item_id]
        name = item.provider if by == "provider" else ""
        if not name:
            categories = str(item.fields.get("categories", "")).replace("|", ",").split(",")
            name = categories[0].strip()
        if name:
            index[position] = names.setdefault(name, len(names))
    return index, list(names)


def _impressions(table) -> tuple[np.ndarray, list]:
    """``(impression number per row, rows of each impression)``."""
    _, number = np.unique(table.group, return_inverse=True)
    order = np.argsort(number, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(number[order]) != 0, True])
    return number, [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def ranked_impressions(scores, item_index, rows_of: list) -> tuple[np.ndarray, np.ndarray]:
    """``(ranking, row)``: each impression's item indices best first (ties: the earlier
    row first) and the table row at each position, ``-1`` padded to the longest."""
    width = max(len(r) for r in rows_of)
    ranking = np.full((len(rows_of), width), fairness.PAD, dtype=np.int64)
    rows = np.full((len(rows_of), width), -1, dtype=np.int64)
    for i, members in enumerate(rows_of):
        ordered = members[np.lexsort((members, -scores[members]))]
        ranking[i, :len(ordered)] = item_index[ordered]
        rows[i, :len(ordered)] = ordered
    return ranking, rows


def _merit_source(requested: str, examples: list) -> str:
    if requested not in MERIT_SOURCES:
        raise AuditError(f"--merit {requested!r}: use one of {', '.join(MERIT_SOURCES)}")
    has_truth = bool(examples) and all(
        "true_relevance" in ex.extras or "true_probability" in ex.extras for ex in examples)
    if requested == "true" and not has_truth:
        raise AuditError("--merit true: the split records no true click probabilities "
                         "(only synthetic data does); use clicks or predicted")
    if requested == "auto":
        return "true" if has_truth else "clicks"
    return requested


def _true_relevance(examples: list) -> np.ndarray:
    """Relevance without any planted provider effect: ``true_relevance`` when the data
    plants one, else ``true_probability``."""
    return np.array([float(ex.extras.get("true_relevance", ex.extras.get("true_probability")))
                     for ex in examples], dtype=np.float64)


def _user_groups(table, examples, train_table, user_column: str | None) -> dict:
    """``{name: (group index per row, group names)}``: activity quartiles of training
    clicks, and the ``user_column`` values."""
    clicks = np.bincount(train_table.user_index[train_table.label > 0],
                         minlength=int(max(table.user_index.max(initial=0),
                                           train_table.user_index.max(initial=0))) + 1)
    index, names = fairness.activity_groups(clicks[table.user_index])
    groups = {"activity": (index, names)}
    if user_column:
        values = [str(ex.extras.get(user_column, "")).strip() for ex in examples]
        names = sorted({v for v in values if v})
        lookup = {v: i for i, v in enumerate(names)}
        if any(v == "" for v in values):
            names.append(NO_GROUP)
        groups[user_column] = (np.array([lookup.get(v, len(lookup)) for v in values]), names)
    return groups


def audit_scores(scores, probabilities, *, table, examples, rows_of, impression_of,
                 item_counts, tail, item_group, group_names, merit, relevance, k: int,
                 user_groups: dict, bootstrap: int, seed: int) -> dict:
    """Every measure of one scorer on one split (see the module docstring)."""
    ranking, rows = ranked_impressions(scores, table.item_index, rows_of)
    top = np.where(np.arange(ranking.shape[1]) < k, ranking, fairness.PAD)
    histories = [[h for h in table.history_index[members[0]] if h > 0] if
                 table.history_index is not None else [] for members in rows_of]
    profile = fairness.profile_popularity(histories, item_counts)
    result = {"popularity": _popularity_section(top, item_counts, tail, profile, bootstrap,
                                                seed)}
    _, ndcg = fairness.impression_ndcg(table.label, scores, impression_of, k)
    result["ndcg"] = {"value": float(ndcg.mean()) if len(ndcg) else float("nan"),
                      "interval": list(metrics.bootstrap_ci(ndcg, bootstrap, seed=seed))}
    units = len(rows_of)
    merit_grid = np.where(rows >= 0, merit[np.maximum(rows, 0)], 0.0)
    exposure = fairness.group_exposure(ranking, merit_grid, item_group, len(group_names), k)

    def disparity(sample):
        return fairness.group_exposure(ranking[sample], merit_grid[sample], item_group,
                                       len(group_names), k)

    samples = fairness.bootstrap_samples(units, bootstrap, seed)
    result["exposure"] = _exposure_section(exposure, [disparity(s) for s in samples],
                                           group_names)
    if relevance is not None:
        group_of_row = item_group[table.item_index]
        result["log_odds_skew"] = log_odds_skews(probabilities, relevance, group_of_row,
                                                 group_names, rows_of, samples)
    result["user_groups"] = {}
    if table.label.min() != table.label.max():
        for name, (index, names) in user_groups.items():
            result["user_groups"][name] = fairness.user_group_metrics(
                table.label, probabilities, impression_of, index, names, ks=(k,),
                bootstrap=bootstrap, seed=seed)
    return result


def _popularity_section(top, item_counts, tail, profile, bootstrap: int, seed: int) -> dict:
    """:func:`fairness.popularity_bias` of top-k lists, with intervals of ARP and APLT."""
    section = fairness.popularity_bias(top, item_counts, tail, profile)
    per_list = fairness.popularity_per_list(top, item_counts, tail)
    section["intervals"] = {
        key: fairness.bootstrap_interval(lambda s, key=key: np.nanmean(per_list[key][s]),
                                         len(top), bootstrap, seed=seed)
        for key in ("aplt", "arp")}
    return section


def catalogue_lists(kind, model, packer, table, examples, rows_of, ids, item_text,
                    candidates: int, batch_size: int, logits=None) -> tuple:
    """Each listed user's top ``candidates`` catalogue items by the model (``logits``
    ``[users, N + 1]`` if given, else the kind's ``catalogue_logits``), the items in their
    history left out: ``(ranking, scores)`` ``[users, candidates]``."""
    first_rows = np.array([members[0] for members in rows_of])
    if logits is None:
        logits = kind.catalogue_logits(model, packer, table.subset(first_rows), item_text,
                                       batch_size)
    logits = np.array(logits, dtype=np.float64)
    logits[:, 0] = -np.inf
    for user, row in enumerate(first_rows):
        seen = [ids.items[h] for h in examples[row].history if h in ids.items]
        logits[user, seen] = -np.inf
    n = min(candidates, logits.shape[1] - 1)
    top = np.argpartition(-logits, n - 1, axis=1)[:, :n]
    order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
    ranking = np.take_along_axis(top, order, axis=1)
    return ranking, np.take_along_axis(logits, ranking, axis=1)


def audit_catalogue(ranking, *, relevant: list, profile, item_counts, tail, item_group,
                    group_names, k: int, user_groups: dict, bootstrap: int,
                    seed: int) -> dict:
    """The catalogue mode's measures of one scorer: popularity bias, nDCG@k of the
    held-out clicks, exposure of the top k against merit (each group's share of the
    held-out clicks) and nDCG@k per user group."""
    top = ranking[:, :k]
    result = {"popularity": _popularity_section(top, item_counts, tail, profile, bootstrap,
                                                seed)}
    ndcg = fairness.list_ndcg(top, relevant, k)
    scored = ndcg[~np.isnan(ndcg)]
    result["ndcg"] = {"value": float(scored.mean()) if len(scored) else float("nan"),
                      "interval": list(metrics.bootstrap_ci(scored, bootstrap, seed=seed))}
    clicked = [np.array([item_group[i] for i in items if item_group[i] >= 0], np.int64)
               for items in relevant]
    zeros = np.zeros(top.shape)

    def exposure_of(sample):
        exposure = fairness.group_exposure(top[sample], zeros[sample], item_group,
                                           len(group_names), k)["exposure"]
        merit = np.bincount(np.concatenate([clicked[i] for i in sample] or [[]]).astype(
            np.int64), minlength=len(group_names))
        return fairness.exposure_against_merit(exposure, merit)

    whole = exposure_of(np.arange(len(top)))
    resampled = [exposure_of(s)
                 for s in fairness.bootstrap_samples(len(top), bootstrap, seed)]
    result["exposure"] = _exposure_section(whole, resampled, group_names)
    result["user_groups"] = {}
    for name, (index, names) in user_groups.items():
        groups = {}
        for g, label in enumerate(names):
            values = ndcg[(index == g) & ~np.isnan(ndcg)]
            groups[label] = {"users": int(len(values)),
                             f"ndcg@{k}": float(values.mean()) if len(values) else float("nan"),
                             "intervals": {f"ndcg@{k}": list(metrics.bootstrap_ci(
                                 values, bootstrap, seed=seed))} if len(values) else {}}
        finite = [v[f"ndcg@{k}"] for v in groups.values() if np.isfinite(v[f"ndcg@{k}"])]
        result["user_groups"][name] = {"groups": groups, "gaps": {
            f"ndcg@{k}": float(max(finite) - min(finite)) if finite else float("nan")}}
    return result


def _exposure_section(whole: dict, resampled: list, group_names: list) -> dict:
    return {
        "groups": {name: {
            "exposure_share": float(whole["exposure_share"][g]),
            "merit_share": float(whole["merit_share"][g]),
            "disparity": float(whole["disparity"][g]),
            "disparity_interval": fairness.percentile_interval(
                [r["disparity"][g] for r in resampled])}
            for g, name in enumerate(group_names)},
        "total_variation": whole["total_variation"],
        "total_variation_interval": fairness.percentile_interval(
            [r["total_variation"] for r in resampled])}


SWEEP_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


def rerank_sweep(ranking, scores, relevant: list, item_counts, tail, item_group,
                 num_groups: int, k: int, weights=SWEEP_WEIGHTS, bootstrap: int = 1000,
                 seed: int = 0) -> list:
    """The exposure-aware reranker (:func:`fairness.popularity_rerank`) over its knob:
    per weight, nDCG@k of the held-out clicks, APLT, ARP, coverage, Gini and the exposure
    total variation against merit, with the relative changes of nDCG and APLT from weight
    0 and paired bootstrap intervals of both (the same lists resampled for every weight)."""
    points, per_list = [], []
    samples = fairness.bootstrap_samples(len(ranking), bootstrap, seed)
    clicked = np.array([item_group[i] for items in relevant for i in items
                        if item_group[i] >= 0], np.int64)
    merit = np.bincount(clicked, minlength=num_groups)
    for weight in weights:
        top = fairness.popularity_rerank(ranking, scores, item_counts, weight, k)
        ndcg = fairness.list_ndcg(top, relevant, k)
        per_list.append((ndcg, fairness.popularity_per_list(top, item_counts, tail)["aplt"]))
        bias = fairness.popularity_bias(top, item_counts, tail)
        exposure = fairness.group_exposure(top, np.zeros(top.shape), item_group, num_groups,
                                           k)["exposure"]
        points.append({"weight": weight, f"ndcg@{k}": float(np.nanmean(ndcg)),
                       "aplt": bias["aplt"], "arp": bias["arp"],
                       "coverage": bias["coverage"], "gini": bias["gini"],
                       "total_variation": fairness.exposure_against_merit(
                           exposure, merit)["total_variation"]})

    def change(values, base, sample):
        low = np.nanmean(base[sample])
        return np.nanmean(values[sample]) / low - 1 if low else float("nan")

    every = np.arange(len(ranking))
    for point, (ndcg, aplt) in zip(points, per_list):
        for key, values, base in (("ndcg_change", ndcg, per_list[0][0]),
                                  ("aplt_change", aplt, per_list[0][1])):
            point[key] = float(change(values, base, every))
            point[f"{key}_interval"] = fairness.percentile_interval(
                [change(values, base, s) for s in samples])
    return points


def log_odds_skews(outcome, relevance, group_of_row, group_names: list, rows_of: list,
                   samples: list) -> dict:
    """Each item group's :func:`fairness.log_odds_shift` of ``outcome`` over
    ``relevance`` (``value``), and the same less the median over groups (``relative``:
    a scorer's overall calibration offset cancels, so a model trained with sampled
    negatives or a softmax still shows which groups it favours). Intervals resample
    impressions and are simultaneous over the groups (Bonferroni: each at
    1 - 0.05 / groups), so "no group outside its interval" is a 95% claim about the
    whole family, not one per group."""
    outcome = np.asarray(outcome, dtype=np.float64)

    def shifts(rows):
        groups = group_of_row[rows]
        values = np.array([fairness.log_odds_shift(outcome[rows[groups == g]],
                                                   relevance[rows[groups == g]])
                           for g in range(len(group_names))])
        finite = values[np.isfinite(values)]
        return values, values - (np.median(finite) if len(finite) else np.nan)

    value, relative = shifts(np.arange(len(outcome)))
    resampled = [shifts(np.concatenate([rows_of[i] for i in sample])) for sample in samples]
    confidence = 1.0 - 0.05 / max(len(group_names), 1)
    return {name: {
        "value": float(value[g]), "relative": float(relative[g]),
        "interval": fairness.percentile_interval([r[0][g] for r in resampled], confidence),
        "relative_interval": fairness.percentile_interval([r[1][g] for r in resampled],
                                                          confidence),
        "rows": int((group_of_row == g).sum())} for g, name in enumerate(group_names)}


def audit(model_dir: str, split: str = "test", k: int = 10, compare: list | None = None,
          merit: str = "auto", item_group: str = "provider", user_column: str | None = None,
          bootstrap: int = 1000, seed: int = 0, catalogue: bool = False,
          candidates: int = 100, sweep: bool = False) -> dict:
    """Audits a finished run (see the module docstring) and writes ``<model_dir>/audit/``.
    Returns the audit (what ``audit.json`` holds)."""
    run = runs.open_run(model_dir)
    cfg = run.cfg
    compare = list(compare or [])
    if k < 1:
        raise AuditError(f"--k {k}: must be at least 1")
    if catalogue and k > candidates:
        raise AuditError(f"--k {k} is larger than --candidates {candidates}")
    if bootstrap < 0:
        raise AuditError(f"--bootstrap {bootstrap}: must be >= 0")
    # name -> finished run, all opened (and checked) before the data is read
    audited = {os.path.basename(os.path.normpath(model_dir)) or "model": run}
    for other in compare:
        other_run = runs.open_run(other)
        if other_run.cfg.data != cfg.data:
            raise AuditError(f"--compare {other}: trained on other data than {model_dir} "
                             "(its data config differs); audit runs of the same data")
        audited[os.path.basename(os.path.normpath(other)) or other] = other_run
    cheap = kinds.names_with("scores_catalogue_from_item_vectors")
    for path, kind in ((r.model_dir, r.kind) for r in audited.values()):
        if catalogue and not kind.scores_catalogue_from_item_vectors:
            raise AuditError(f"--catalogue: {path} is a {kind.name} run, which would score "
                             "every (user, item) pair; audit it on the impressions (without "
                             f"--catalogue) or audit a run of model.kind={' / '.join(cheap)}")
    prepared = run.prepared()
    if split not in prepared.tables or not len(prepared.tables[split]):
        raise AuditError(f"--split {split}: the run's data has no {split} impressions; "
                         "audit a split that has some (validation or test)")
    if k > len(prepared.ids.items):
        raise AuditError(f"--k {k} is larger than the catalogue ({len(prepared.ids.items)} "
                         "items)")
    table, examples = prepared.tables[split], prepared.splits[split]
    merit_source = _merit_source(merit, examples)
    if user_column and not any(user_column in ex.extras for ex in examples):
        known = sorted({key for ex in examples[:1000] for key in ex.extras})
        raise AuditError(f"--user_column {user_column!r} is not a column of the {split} "
                         f"impressions (extra columns: {', '.join(known) or 'none'})")

    train_table = prepared.tables["train"]
    num_items = len(prepared.ids.items)
    clicked = train_table.positive_item_indices()
    item_counts = np.bincount(clicked, minlength=num_items + 1).astype(np.float64)
    tail = fairness.long_tail_mask(item_counts)
    group_index, group_names = item_groups(prepared.catalogue, prepared.ids, item_group)
    if not group_names:
        raise AuditError(f"--item_group {item_group}: no catalogue item has one")
    impression_of, rows_of = _impressions(table)
    relevance = _true_relevance(examples) if merit_source == "true" else None
    user_groups = _user_groups(table, examples, train_table, user_column)

    log_popularity = MostPopular.log_popularity_of(train_table.item_index, train_table.label,
                                                   num_items)
    relevant = [set(table.item_index[members][table.label[members] > 0].tolist())
                for members in rows_of]
    if catalogue:
        results, lists = _audit_catalogue_scorers(
            audited, prepared, table, examples, rows_of, log_popularity, relevant, candidates,
            item_counts=item_counts, tail=tail, item_group=group_index,
            group_names=group_names, k=k, bootstrap=bootstrap, seed=seed,
            user_groups={name: (index[[m[0] for m in rows_of]], names)
                         for name, (index, names) in user_groups.items()})
        merit_source = "held-out clicks"
        relevance = None
    else:
        results, lists = _audit_impression_scorers(
            audited, prepared, table, examples, rows_of, impression_of, log_popularity,
            relevance, merit_source, item_counts=item_counts, tail=tail,
            item_group=group_index, group_names=group_names, k=k, user_groups=user_groups,
            bootstrap=bootstrap, seed=seed)
    report = {"model_dir": model_dir, "split": split, "k": k, "merit": merit_source,
              "mode": "catalogue" if catalogue else "impressions",
              "item_group": item_group, "groups": group_names, "bootstrap": bootstrap,
              "impressions": len(rows_of), "rows": int(len(table)),
              "long_tail_items": int(tail.sum()), "catalogue_items": num_items,
              "scorers": results}
    if catalogue:
        report["candidates"] = candidates
    elif k >= max(len(members) for members in rows_of):
        report["note"] = (f"k = {k} covers every candidate of every impression: the top k "
                          "holds the same items whatever the scores, so ARP, APLT, coverage "
                          "and Gini cannot tell scorers apart (exposure still can, through "
                          "rank); use a smaller --k or --catalogue")
    if sweep:
        name = next(iter(audited))
        ranking, scores = lists[name]
        report["sweep"] = {"scorer": name, "points": rerank_sweep(
            ranking, scores, relevant, item_counts, tail, group_index, len(group_names), k,
            bootstrap=bootstrap, seed=seed)}
    if relevance is not None:
        group_of_row = group_index[table.item_index]
        samples = fairness.bootstrap_samples(len(rows_of), bootstrap, seed)
        report["data_log_odds_skew"] = log_odds_skews(
            table.label, relevance, group_of_row, group_names, rows_of, samples)
    audit_report.write(model_dir, report)
    return report


def _audit_impression_scorers(audited, prepared, table, examples, rows_of, impression_of,
                              log_popularity, relevance, merit_source, **common) -> tuple:
    """Impressions mode: every scorer ranks each impression's candidates."""
    scorers = {"popularity": log_popularity[table.item_index]}
    for name, run in audited.items():
        scorers[name] = scoring.predict_logits(run.model, table, run.featurizer,
                                                 run.cfg.train.eval_batch_size)
    results, lists = {}, {}
    for name, logits in scorers.items():
        logits = np.asarray(logits, np.float64)
        ranking, rows = ranked_impressions(logits, table.item_index, rows_of)
        lists[name] = (ranking, np.where(rows >= 0, logits[np.maximum(rows, 0)], -np.inf))
        probabilities = _sigmoid(logits)
        merit_values = {"true": relevance, "clicks": table.label.astype(np.float64),
                        "predicted": probabilities}[merit_source]
        results[name] = audit_scores(
            logits, probabilities, table=table, examples=examples, rows_of=rows_of,
            impression_of=impression_of, merit=merit_values, relevance=relevance, **common)
    return results, lists


def _audit_catalogue_scorers(audited, prepared, table, examples, rows_of, log_popularity,
                             relevant, candidates, **common) -> tuple:
    """Catalogue mode: every scorer ranks the whole catalogue for each listed user."""
    ids = prepared.ids
    run_cfg = next(iter(audited.values())).cfg
    item_text = ids.item_texts(prepared.catalogue, run_cfg.data.item_text_fields)
    first_rows = [members[0] for members in rows_of]
    histories = [[ids.items[h] for h in examples[row].history if h in ids.items]
                 for row in first_rows]
    profile = fairness.profile_popularity(histories, common["item_counts"])
    lists = {"popularity": catalogue_lists(
        None, None, None, table, examples, rows_of, ids, item_text, candidates, 0,
        logits=np.tile(log_popularity, (len(rows_of), 1)))}
    for name, run in audited.items():
        lists[name] = catalogue_lists(run.kind, run.model, run.featurizer, table,
                                      examples, rows_of, ids, item_text, candidates,
                                      run.cfg.train.eval_batch_size)
    results = {name: audit_catalogue(ranking, relevant=relevant, profile=profile, **common)
               for name, (ranking, _) in lists.items()}
    return results, lists
