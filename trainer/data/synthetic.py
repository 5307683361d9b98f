"""A seeded synthetic catalogue and click log whose true reasons are known.

Items are built from a category word, two attribute words, a provider and distractor words::

    title:       "<provider> <attribute_1> <attribute_2> <category> <distractor>"
    description: "<distractor> <distractor> <distractor>"

Each user has hidden tastes: two attribute words and a favourite category. Their click
history is sampled with items carrying a taste word (or the favourite category) far more
likely, so the history reveals the tastes. Each impression shows several candidates; some
carry a natural-language query ("i want to buy a new laptop") and then show more items of
the queried category. A candidate is clicked with the known probability
``sigmoid(logit)`` where::

    logit = BIAS
          + TASTE_WEIGHT    * (# candidate attributes that are user tastes)
          + CATEGORY_WEIGHT * [candidate category == favourite category]
          + HISTORY_WEIGHT  * min(# recent history items sharing an attribute, 2)
          + QUERY_MATCH     * [query names the candidate's category]
          + QUERY_MISMATCH  * [a query names another category]
          + provider_bias   * [candidate provider == biased_provider]

The last term is a planted, known unfairness (``data.synthetic.provider_bias``, 0 by
default): clicks favour one provider by that many log-odds whatever the user's taste, as a
presentation or brand effect would. With it on, examples also record
``true_relevance``, the click probability without it, which the fairness audit
(``python -m trainer.task audit``) takes as merit: it must find the planted skew, and none
when the knob is off.

"Recent history" is the last ``history_window`` items (what the model sees by default).
Every example records ``true_probability`` and its true reasons -- the candidate words that
raised the logit (``true_reason_tokens``) and the recent history items that did
(``true_reason_history``) -- so explanations can be scored against the truth, and the
oracle AUC of the true probabilities bounds what any model can reach.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from trainer.data.canonical import Catalogue, Example, Item

CATEGORIES = ("laptop", "phone", "camera", "headphones", "sneakers", "jacket", "backpack",
              "watch", "blender", "novel")
ATTRIBUTES = ("wireless", "waterproof", "vintage", "leather", "gaming", "compact", "organic",
              "solar", "titanium", "bamboo", "neon", "velvet", "carbon", "retro",
              "ultralight", "handmade", "silent", "rugged", "pastel", "marble", "smart",
              "foldable", "recycled", "glossy")
DISTRACTORS = ("new", "classic", "edition", "premium", "series", "model", "deluxe",
               "original", "plus", "pro", "lite", "standard", "essential", "signature",
               "everyday", "limited", "select", "prime", "basic", "studio", "urban", "home",
               "travel", "family", "daily", "modern", "simple", "core", "max", "one")
PROVIDERS = ("acme", "globex", "initech", "umbrella", "stark", "wayne")
QUERY_TEMPLATES = ("i want to buy a new {}", "looking for a {}", "show me a good {}",
                   "gift idea: a {}", "which {} should i get")

BIAS = -2.4
TASTE_WEIGHT = 1.6
CATEGORY_WEIGHT = 0.8
HISTORY_WEIGHT = 0.7
QUERY_MATCH = 2.0
QUERY_MISMATCH = -1.0
TASTE_HISTORY_BOOST = 50.0  # how much likelier a taste item is to enter the history
HISTORY_WINDOW = 5


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def make_catalogue(num_items: int, rng: np.random.Generator) -> Catalogue:
    """Builds ``num_items`` items; ids are ``i0000``, ``i0001``, ..."""
    catalogue = Catalogue()
    for index in range(num_items):
        category = CATEGORIES[rng.integers(len(CATEGORIES))]
        attr_1, attr_2 = rng.choice(len(ATTRIBUTES), size=2, replace=False)
        provider = PROVIDERS[rng.integers(len(PROVIDERS))]
        d = rng.choice(len(DISTRACTORS), size=4, replace=False)
        # Both attributes sit in the title because the user side shows history titles.
        title = f"{provider} {ATTRIBUTES[attr_1]} {ATTRIBUTES[attr_2]} {category} " \
                f"{DISTRACTORS[d[0]]}"
        description = f"{DISTRACTORS[d[1]]} {DISTRACTORS[d[2]]} {DISTRACTORS[d[3]]}"
        item_id = f"i{index:04d}"
        catalogue[item_id] = Item(
            item_id,
            {"title": title, "categories": category, "description": description,
             "attributes": f"{ATTRIBUTES[attr_1]} {ATTRIBUTES[attr_2]}"},
            provider=provider)
    return catalogue


def _attributes(item: Item) -> set:
    return set(item.fields["attributes"].split())


def click_logit(candidate: Item, tastes: set, favourite: str, recent_history: list,
                query_category: str, attributes: dict | None = None) -> tuple[float, list, list]:
    """The true logit of a click and its reasons: (logit, reason_tokens, reason_history).
    ``attributes`` (item id -> its attribute set) saves re-reading them per call."""
    if attributes is None:
        attributes = {item.item_id: _attributes(item) for item in [candidate, *recent_history]}
    cand_attrs = attributes[candidate.item_id]
    category = candidate.fields["categories"]
    taste_hits = sorted(cand_attrs & tastes)
    reason_history = [h.item_id for h in recent_history if attributes[h.item_id] & cand_attrs]
    logit = BIAS + TASTE_WEIGHT * len(taste_hits) + HISTORY_WEIGHT * min(len(reason_history), 2)
    reason_tokens = list(taste_hits)
    # Tokens shared with the cited history items raised the logit too.
    for h in recent_history:
        if h.item_id in reason_history:
            reason_tokens.extend(sorted((attributes[h.item_id] & cand_attrs)
                                        - set(reason_tokens)))
    if category == favourite:
        logit += CATEGORY_WEIGHT
        reason_tokens.append(category)
    if query_category:
        if category == query_category:
            logit += QUERY_MATCH
            if category not in reason_tokens:
                reason_tokens.append(category)
        else:
            logit += QUERY_MISMATCH
    return logit, reason_tokens, reason_history


def generate(num_items: int = 400, num_users: int = 600, impressions_per_user: int = 8,
             candidates_per_impression: int = 5, min_history: int = 3, max_history: int = 8,
             query_fraction: float = 0.3, seed: int = 7,
             history_window: int = HISTORY_WINDOW, eval_users: int = 0,
             independent_users: bool = False, provider_bias: float = 0.0,
             biased_provider: str = PROVIDERS[0]) -> tuple[Catalogue, list[Example]]:
    """Generates a catalogue and a labelled impression log (deterministic in ``seed``).

    A user's history is a snapshot taken before their impressions. Impressions are assigned
    chronologically: the last goes to ``test``, the one before to ``validation`` and the rest
    to ``train`` (a temporal split per user). With ``eval_users`` > 0 only the first
    ``eval_users`` users are split so; the others' impressions all train (a fixed-size
    evaluation while the training log grows: the scale test). ``provider_bias`` adds that
    many log-odds to every click on ``biased_provider``'s items (see the module docstring).
    """
    catalogue, examples = stream(num_items, num_users, impressions_per_user,
                                 candidates_per_impression, min_history, max_history,
                                 query_fraction, seed, history_window, eval_users,
                                 independent_users, provider_bias=provider_bias,
                                 biased_provider=biased_provider)
    return catalogue, list(examples)


def stream(num_items: int = 400, num_users: int = 600, impressions_per_user: int = 8,
           candidates_per_impression: int = 5, min_history: int = 3, max_history: int = 8,
           query_fraction: float = 0.3, seed: int = 7, history_window: int = HISTORY_WINDOW,
           eval_users: int = 0, independent_users: bool = False,
           users: tuple | None = None, provider_bias: float = 0.0,
           biased_provider: str = PROVIDERS[0]) -> tuple[Catalogue, Iterator[Example]]:
    """:func:`generate`'s catalogue and its examples as an iterator, user after user: the
    same examples in the same order, without holding them (any ``num_users``).

    By default one random stream runs through every user, so user k's draws depend on
    all users before it. ``independent_users`` gives each user a generator of its own,
    seeded by ``(seed, user)`` (other data, the same distribution), so ``users=(start,
    stop)`` yields that range alone and ranges can be generated in parallel
    (``python -m trainer.task prepare``)."""
    if candidates_per_impression < 2:
        raise ValueError("candidates_per_impression must be at least 2 for ranking metrics")
    if num_items < candidates_per_impression + max_history:
        raise ValueError("num_items is too small for the history and candidate counts")
    if users is not None and not independent_users:
        raise ValueError("a range of users needs independent_users=True")
    if biased_provider not in PROVIDERS:
        raise ValueError(f"data.synthetic.biased_provider={biased_provider!r} is not a "
                         f"synthetic provider; use one of {', '.join(PROVIDERS)}")
    rng = np.random.default_rng(seed)
    catalogue = make_catalogue(num_items, rng)
    start, stop = users if users is not None else (0, num_users)

    def user_rng(user_index: int) -> np.random.Generator:
        return np.random.default_rng([seed, user_index]) if independent_users else rng
    return catalogue, _examples(catalogue, user_rng, range(start, min(stop, num_users)),
                                impressions_per_user, candidates_per_impression,
                                min_history, max_history, query_fraction, history_window,
                                eval_users, provider_bias, biased_provider)


def _examples(catalogue: Catalogue, user_rng, user_indices: range,
              impressions_per_user: int, candidates_per_impression: int, min_history: int,
              max_history: int, query_fraction: float, history_window: int,
              eval_users: int, provider_bias: float = 0.0,
              biased_provider: str = PROVIDERS[0]) -> Iterator[Example]:
    num_items = len(catalogue)
    items = list(catalogue.values())
    attributes = {it.item_id: _attributes(it) for it in items}
    item_categories = np.array([it.fields["categories"] for it in items])
    # item x attribute membership, so a user's sampling weights are one vector operation
    has_attribute = np.array([[a in attributes[it.item_id] for a in ATTRIBUTES]
                              for it in items], dtype=bool)
    for user_index in user_indices:
        rng = user_rng(user_index)
        user_id = f"u{user_index:05d}"
        taste_index = rng.choice(len(ATTRIBUTES), size=2, replace=False)
        tastes = {ATTRIBUTES[a] for a in taste_index}
        favourite = CATEGORIES[rng.integers(len(CATEGORIES))]
        weights = (np.where(has_attribute[:, taste_index].any(axis=1), TASTE_HISTORY_BOOST, 1.0)
                   * np.where(item_categories == favourite, 4.0, 1.0))
        length = int(rng.integers(min_history, max_history + 1))
        history_idx = rng.choice(num_items, size=length, replace=False, p=weights / weights.sum())
        history = [items[i] for i in history_idx]
        history_ids = tuple(h.item_id for h in history)
        # The history is fixed per user, so is what its impressions draw from.
        pool = np.setdiff1d(np.arange(num_items), history_idx)
        timestamp = 1_600_000_000 + user_index * 10_000
        for imp in range(impressions_per_user):
            split = ("train" if 0 < eval_users <= user_index else
                     "test" if imp == impressions_per_user - 1 else
                     "validation" if imp == impressions_per_user - 2 else "train")
            query_category = ""
            query = ""
            if rng.random() < query_fraction:
                query_category = CATEGORIES[rng.integers(len(CATEGORIES))]
                query = QUERY_TEMPLATES[rng.integers(len(QUERY_TEMPLATES))].format(query_category)
                in_cat = pool[item_categories[pool] == query_category]
                n_cat = min(len(in_cat), candidates_per_impression // 2 + 1)
                chosen = list(rng.choice(in_cat, size=n_cat, replace=False))
                rest = np.setdiff1d(pool, chosen)
                chosen += list(rng.choice(rest, size=candidates_per_impression - n_cat,
                                          replace=False))
            else:
                chosen = list(rng.choice(pool, size=candidates_per_impression, replace=False))
            recent = history[-history_window:]
            for cand_index in chosen:
                candidate = items[cand_index]
                logit, reason_tokens, reason_history = click_logit(
                    candidate, tastes, favourite, recent, query_category, attributes)
                extras = {}
                if provider_bias:
                    extras["true_relevance"] = round(_sigmoid(logit), 6)
                    if candidate.provider == biased_provider:
                        logit += provider_bias
                        if provider_bias > 0:  # the provider's name raised the logit
                            reason_tokens = [*reason_tokens, candidate.provider]
                probability = _sigmoid(logit)
                label = int(rng.random() < probability)
                yield Example(
                    user_id=user_id, impression_id=f"{user_id}-{imp}",
                    history=history_ids, candidate=candidate.item_id,
                    label=label, query=query, timestamp=timestamp, split=split,
                    extras={"true_probability": round(probability, 6),
                            "true_reason_tokens": reason_tokens,
                            "true_reason_history": reason_history, **extras})
            timestamp += 100
