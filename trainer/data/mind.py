"""MIND (Microsoft News Dataset) loader producing the canonical :class:`SplitData`.

Expected layout (as MINDdemo / MINDsmall / MINDlarge unpack)::

    <data_dir>/<train_subdir>/behaviors.tsv   news.tsv
    <data_dir>/<dev_subdir>/behaviors.tsv     news.tsv
    <data_dir>/<test_subdir>/behaviors.tsv    news.tsv     (optional)

Both files are tab-separated with no header row.

``behaviors.tsv``: ``impression_id``, ``user_id``, ``time`` (``11/15/2019 8:55:22 AM``),
``history`` (space-separated news ids, oldest first, may be empty) and ``impressions``
(space-separated ``N123-1 N456-0``: news id and click label). MIND-large's test set has
no labels (``N123``).

``news.tsv``: ``news_id``, ``category``, ``subcategory``, ``title``, ``abstract``, ``url``,
``title_entities``, ``abstract_entities`` (the entity columns may be empty).

What it produces:

- Catalogue: the union of ``news.tsv`` over the split directories loaded. Each item keeps
  ``title`` plus the fields named in ``data.mind.text_fields`` (any of ``title``,
  ``abstract``, ``category``, ``subcategory``); ``provider`` is the category, the group
  attribute for fairness metrics. The item side of the BERT pair is chosen separately by
  ``data.item_text_fields`` -- for MIND name these fields there (e.g.
  ``[title, category, subcategory]``), since MIND items have no ``categories`` /
  ``description`` fields.
- One :class:`Example` per candidate shown: ``impression_id`` is
  ``"<split_dir>-<impression_id>"`` (so train and dev ids never collide), ``history`` is
  MIND's order (oldest first, most recent last), ``timestamp`` is the time read as UTC in
  seconds since the epoch.
- Splits. MIND has no labelled test set except for MIND-large's leaderboard, whose labels
  were never published, so by default the *dev* set serves as ``test`` and ``validation``
  is a seeded ``data.mind.validation_fraction`` of the train impressions (whole
  impressions, never single candidates; the same for any ``max_train_impressions``).
  If ``data.mind.test_subdir`` is set and its behaviours carry labels, that directory is
  ``test`` and dev becomes ``validation``; if they carry no labels it is skipped and
  ``info["notes"]`` says so. ``data.mind.max_train_impressions > 0`` then keeps a seeded
  subset of the train impressions (validation is carved out first, so it does not depend
  on the cap).
- Nothing is dropped silently: history ids missing from every ``news.tsv`` loaded are
  removed from that history, candidates missing are dropped, and both are counted in
  ``info["missing_news"]``; impressions left with no positive or no negative are kept
  (ranking metrics skip them) and counted in ``info["single_class_impressions"]``;
  impressions left with no candidate at all are counted in ``info["empty_impressions"]``.

Every error in the input (missing file, wrong column count, malformed impression token,
label other than 0/1, bad time, non-UTF-8 text, duplicate ids) raises :class:`DataError`
naming the file and line and what to do.

Example::

    cfg = MindConfig(train_subdir="MINDsmall_train", dev_subdir="MINDsmall_dev")
    data = load("/data/mind", cfg)
    data.splits["test"][0].impression_id   # "MINDsmall_dev-1"
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Iterator

import numpy as np
import tensorflow as tf

from trainer.config import ConfigError, MindConfig
from trainer.data.canonical import (Catalogue, DataError, Example, Item, SplitData,
                                        decoded_lines)

NEWS_COLUMNS = ("news_id", "category", "subcategory", "title", "abstract", "url",
                "title_entities", "abstract_entities")
BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
NEWS_TEXT_FIELDS = ("title", "abstract", "category", "subcategory")

_TIME_RE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ([AaPp][Mm])$")
_INT_RE = re.compile(r"[+-]?\d+")
_LABELS = {"0": 0, "1": 1}
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_SAMPLE_IDS = 10  # how many missing news ids info lists by name


def _layout_hint(cfg: MindConfig) -> str:
    return (f"data.data_dir must hold '{cfg.train_subdir}/' and '{cfg.dev_subdir}/' with "
            "behaviors.tsv and news.tsv each (MINDsmall layout); set data.mind.train_subdir / "
            "dev_subdir / test_subdir to the directory names used")


def _iter_lines(path: str, hint: str) -> Iterator[tuple[int, str]]:
    """Yields ``(line_number, text)`` for non-blank lines, decoding each as UTF-8."""
    for line_no, text in decoded_lines(
            path, "utf-8", missing_hint=hint,
            fix="re-download the file or re-save it as UTF-8"):
        # Strip only the line ending: trailing tabs are empty columns (entities).
        text = text.rstrip("\r\n")
        if text.strip():
            yield line_no, text


def _split_columns(text: str, path: str, line: int, columns: tuple) -> list[str]:
    fields = text.split("\t")
    if len(fields) != len(columns):
        raise DataError(
            f"{path}:{line}: expected {len(columns)} tab-separated columns "
            f"({', '.join(columns)}), found {len(fields)}; MIND files have no header and use "
            "tabs only -- use the file as unpacked from the MIND zip")
    return fields


def parse_time(text: str, path: str = "<time>", line: int = 0) -> int:
    """``"11/15/2019 8:55:22 AM"`` (MIND's format, read as UTC) -> seconds since the epoch."""
    match = _TIME_RE.match(text.strip())
    error = DataError(f"{path}:{line}: time {text!r} is not like '11/15/2019 8:55:22 AM' "
                      "(month/day/year h:mm:ss AM|PM); fix or drop the line")
    if not match:
        raise error
    month, day, year, hour, minute, second = (int(g) for g in match.groups()[:6])
    if not 1 <= hour <= 12:
        raise error
    hour = hour % 12 + (12 if match.group(7).upper() == "PM" else 0)
    try:
        moment = datetime.datetime(year, month, day, hour, minute, second,
                                   tzinfo=datetime.timezone.utc)
    except ValueError:
        raise error from None
    return (moment - _EPOCH) // datetime.timedelta(seconds=1)


def _parse_impressions(text: str, path: str, line: int) -> tuple[list, bool]:
    """``"N1-1 N2-0"`` -> ``([("N1", 1), ("N2", 0)], True)``; ``"N1 N2"`` -> labels ``None``.

    Returns the candidates and whether they are labelled; a mix is an error.
    """
    tokens = text.split()
    if not tokens:
        raise DataError(f"{path}:{line}: the impressions column is empty; every impression "
                        "needs at least one candidate -- drop the line")
    candidates = []
    labelled = "-" in tokens[0]
    for token in tokens:
        if ("-" in token) != labelled:
            raise DataError(
                f"{path}:{line}: impression token {token!r} mixes labelled ('N123-1') and "
                "unlabelled ('N123') candidates; every token in a file must be one kind")
        if not labelled:
            candidates.append((token, None))
            continue
        news_id, label = token.rsplit("-", 1)
        if news_id and label in _LABELS:  # the fast path: millions of tokens on MIND-large
            candidates.append((news_id, _LABELS[label]))
            continue
        if not news_id or not _INT_RE.fullmatch(label):
            raise DataError(f"{path}:{line}: malformed impression token {token!r}; expected "
                            "'<news_id>-<label>' such as 'N123-1' with label 0 or 1")
        raise DataError(f"{path}:{line}: impression token {token!r} has label {label}, "
                        "outside {0, 1}; labels are clicks (1) and non-clicks (0)")
    return candidates, labelled


def read_news(path: str, keep_fields: tuple, hint: str = "") -> Catalogue:
    """Reads one ``news.tsv`` into a :class:`Catalogue` keeping ``keep_fields`` as text."""
    catalogue = Catalogue()
    first_line = {}
    for line, text in _iter_lines(path, hint):
        row = dict(zip(NEWS_COLUMNS, _split_columns(text, path, line, NEWS_COLUMNS)))
        news_id = row["news_id"].strip()
        if not news_id or " " in news_id:
            raise DataError(f"{path}:{line}: news_id {news_id!r} must be non-empty and contain "
                            "no spaces")
        if news_id in catalogue:
            raise DataError(f"{path}:{line}: duplicate news_id {news_id!r} (first on line "
                            f"{first_line[news_id]}); keep one row per news id")
        first_line[news_id] = line
        fields = {name: row[name].strip() for name in keep_fields}
        catalogue[news_id] = Item(news_id, fields, provider=row["category"].strip())
    if not catalogue:
        raise DataError(f"{path}: no news rows; the file is empty -- re-download it")
    return catalogue


class _Impression:
    """One behaviours line kept as raw text until it is expanded (saves memory on MIND-large)."""

    __slots__ = ("line", "impression_id", "user_id", "timestamp", "history", "impressions")

    def __init__(self, line, impression_id, user_id, timestamp, history, impressions):
        self.line = line
        self.impression_id = impression_id
        self.user_id = user_id
        self.timestamp = timestamp
        self.history = history
        self.impressions = impressions


def _peek_labelled(path: str, hint: str) -> bool:
    """Whether the first impression in ``path`` carries labels (``N1-1`` vs ``N1``)."""
    for line, text in _iter_lines(path, hint):
        fields = _split_columns(text, path, line, BEHAVIOR_COLUMNS)
        return _parse_impressions(fields[4], path, line)[1]
    raise DataError(f"{path}: no impressions; the file is empty -- re-download it")


def read_behaviors(path: str, hint: str = "") -> list[_Impression]:
    """Reads and checks every line of a labelled ``behaviors.tsv``."""
    return list(iter_behaviors(path, hint))


def iter_behaviors(path: str, hint: str = "") -> Iterator[_Impression]:
    """:func:`read_behaviors` one impression at a time (the checks are the same; the
    impression ids seen so far are kept, to refuse a duplicate)."""
    count = 0
    first_line = {}
    for line, text in _iter_lines(path, hint):
        impression_id, user_id, time_text, history, tokens = _split_columns(
            text, path, line, BEHAVIOR_COLUMNS)
        impression_id, user_id = impression_id.strip(), user_id.strip()
        if not impression_id or not user_id:
            raise DataError(f"{path}:{line}: impression_id and user_id must be non-empty")
        if impression_id in first_line:
            raise DataError(f"{path}:{line}: duplicate impression_id {impression_id!r} (first "
                            f"on line {first_line[impression_id]}); ids group candidates, so "
                            "each must be unique in a file")
        first_line[impression_id] = line
        _, labelled = _parse_impressions(tokens, path, line)
        if not labelled:
            raise DataError(
                f"{path}:{line}: impressions have no click labels ('N123' instead of "
                "'N123-1'); only labelled behaviours can be train/dev data. MIND-large's "
                "official test set is unlabelled: leave data.mind.test_subdir empty")
        count += 1
        yield _Impression(line, impression_id, user_id, parse_time(time_text, path, line),
                          history, tokens)
    if not count:
        raise DataError(f"{path}: no impressions; the file is empty -- re-download it")


class _Expander:
    """Turns kept impressions into Examples, resolving ids against the catalogue and counting."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue
        self.missing = {"history": 0, "candidate": 0}
        self.missing_ids: set = set()
        self._history_cache: dict = {}  # raw history text -> (tuple, missing count)

    def _history(self, text: str) -> tuple:
        cached = self._history_cache.get(text)
        if cached is None:
            ids = text.split()
            kept = tuple(i for i in ids if i in self.catalogue)
            if len(kept) != len(ids):
                self.missing_ids.update(i for i in ids if i not in self.catalogue)
            cached = (kept, len(ids) - len(kept))
            self._history_cache[text] = cached
        # Counted per impression, cached or not: the count is of occurrences.
        self.missing["history"] += cached[1]
        return cached[0]

    def expand(self, impressions: list, split_dir: str, split: str, path: str,
               stats: dict) -> list[Example]:
        examples = []
        for imp in impressions:
            examples.extend(self.expand_one(imp, split_dir, split, path, stats))
        return examples

    def expand_one(self, imp: _Impression, split_dir: str, split: str, path: str,
                   stats: dict) -> list[Example]:
        """One impression's examples (none when no candidate is in the catalogue)."""
        history = self._history(imp.history)
        candidates, _ = _parse_impressions(imp.impressions, path, imp.line)
        kept = []
        for news_id, label in candidates:
            if news_id in self.catalogue:
                kept.append((news_id, label))
            else:
                self.missing["candidate"] += 1
                self.missing_ids.add(news_id)
        if not kept:
            stats["empty_impressions"] += 1
            return []
        stats["impressions"] += 1
        positives = sum(label for _, label in kept)
        stats["positives"] += positives
        if positives == 0 or positives == len(kept):
            stats["single_class_impressions"] += 1
        stats["users"].add(imp.user_id)
        group_id = f"{split_dir}-{imp.impression_id}"
        stats["examples"] += len(kept)
        return [Example(user_id=imp.user_id, impression_id=group_id, history=history,
                        candidate=news_id, label=label, timestamp=imp.timestamp, split=split)
                for news_id, label in kept]


def _check_config(cfg: MindConfig) -> tuple:
    if not cfg.train_subdir:
        raise ConfigError("config key 'data.mind.train_subdir' must name the train directory")
    if not 0 <= cfg.validation_fraction < 1:
        raise ConfigError(f"config key 'data.mind.validation_fraction' must be in [0, 1), got "
                          f"{cfg.validation_fraction}")
    if cfg.max_train_impressions < 0:
        raise ConfigError("config key 'data.mind.max_train_impressions' must be >= 0 "
                          "(0 keeps all)")
    unknown = [f for f in cfg.text_fields if f not in NEWS_TEXT_FIELDS]
    if unknown:
        raise ConfigError(f"config key 'data.mind.text_fields' has unknown field(s) {unknown}; "
                          f"choose from {list(NEWS_TEXT_FIELDS)}")
    # Title is always kept: history titles are the user side of the pair.
    return ("title",) + tuple(dict.fromkeys(f for f in cfg.text_fields if f != "title"))


def stream(data_dir: str, cfg: MindConfig):
    """:func:`load` without collecting the examples: ``(catalogue, examples, info)`` where
    ``examples()`` yields them impression by impression, reading the behaviour files line
    by line (``python -m trainer.task prepare``; MIND-large does not fit as examples).
    The train file is read once here to count and check its lines (the seeded validation
    carve-out and the train cap are chosen by line number); ``info`` gains the counts of a
    pass when it ends. Raises DataError / ConfigError as :func:`load` does."""
    keep_fields = _check_config(cfg)
    hint = _layout_hint(cfg)
    if not tf.io.gfile.isdir(data_dir):
        raise DataError(f"{data_dir}: MIND data directory not found; {hint}")

    def files(subdir: str) -> tuple[str, str]:
        base = os.path.join(data_dir, subdir)
        return os.path.join(base, "behaviors.tsv"), os.path.join(base, "news.tsv")

    notes = []
    test_dir = ""
    if cfg.test_subdir:
        test_behaviors, _ = files(cfg.test_subdir)
        if _peek_labelled(test_behaviors, hint):
            test_dir = cfg.test_subdir
        else:
            notes.append(f"{test_behaviors} has no click labels (MIND-large's official test "
                         "set); it was skipped and dev serves as test")
    if test_dir:
        validation_dir = cfg.dev_subdir  # "" -> carved out of train below
    else:
        test_dir, validation_dir = cfg.dev_subdir, ""
        if cfg.dev_subdir:
            notes.append(f"test = '{cfg.dev_subdir}' (MIND's dev set: the official test set "
                         "has no labels); validation = a seeded "
                         f"{cfg.validation_fraction} of '{cfg.train_subdir}' impressions")
    dirs = [d for d in dict.fromkeys((cfg.train_subdir, validation_dir, test_dir)) if d]

    catalogue = Catalogue()
    news_conflicts = 0
    for subdir in dirs:
        for news_id, item in read_news(files(subdir)[1], keep_fields, hint).items():
            existing = catalogue.get(news_id)
            if existing is None:
                catalogue[news_id] = item
            elif existing != item:
                news_conflicts += 1  # first directory wins; counted so it is not silent

    train_path = files(cfg.train_subdir)[0]
    # Which lines of the train file go to validation, and which train (the cap), chosen
    # from the line count alone, so streaming and loading pick the same impressions.
    n_train_file = sum(1 for _ in iter_behaviors(train_path, hint))
    rng = np.random.default_rng(cfg.seed)
    validation_lines: set = set()
    remaining = np.arange(n_train_file)
    if not validation_dir and cfg.validation_fraction > 0 and n_train_file > 1:
        # Whole impressions go to validation, so a group is never split across splits.
        n_val = min(max(int(round(cfg.validation_fraction * n_train_file)), 1),
                    n_train_file - 1)
        validation_lines = set(rng.permutation(n_train_file)[:n_val].tolist())
        remaining = np.array([i for i in range(n_train_file) if i not in validation_lines],
                             dtype=np.int64)
    train_before_cap = len(remaining)
    train_lines = None  # None: every remaining line
    if 0 < cfg.max_train_impressions < len(remaining):
        keep = np.sort(rng.choice(len(remaining), cfg.max_train_impressions, replace=False))
        train_lines = set(remaining[keep].tolist())
    del remaining

    def train_file_split(index: int) -> str:
        if index in validation_lines:
            return "validation"
        return "train" if train_lines is None or index in train_lines else ""

    # (split, subdir, path, impressions) in file order; the train file feeds validation too
    # when validation is carved out of it.
    def impressions():
        for index, imp in enumerate(iter_behaviors(train_path, hint)):
            split = train_file_split(index)
            if split:
                yield split, cfg.train_subdir, train_path, imp
        for split, subdir in (("validation", validation_dir), ("test", test_dir)):
            if subdir:
                path = files(subdir)[0]
                for imp in iter_behaviors(path, hint):
                    yield split, subdir, path, imp

    if cfg.max_train_impressions and train_before_cap > cfg.max_train_impressions:
        notes.append(f"train capped to a seeded {cfg.max_train_impressions} of "
                     f"{train_before_cap} impressions")

    def examples():
        expander = _Expander(catalogue)
        stats = {split: {"impressions": 0, "examples": 0, "positives": 0,
                         "single_class_impressions": 0, "empty_impressions": 0,
                         "users": set()} for split in ("train", "validation", "test")}
        for split, subdir, path, imp in impressions():
            yield from expander.expand_one(imp, subdir, split, path, stats[split])
        info.update(_stats_info(stats, expander))

    info = {
        "source": "mind",
        "data_dir": data_dir,
        # Which directory each split came from; validation carved out of train says so.
        "split_dirs": {"train": cfg.train_subdir,
                       "validation": validation_dir or (
                           f"{cfg.train_subdir} (seeded {cfg.validation_fraction})"
                           if validation_lines else ""),
                       "test": test_dir},
        "news": len(catalogue),
        "news_conflicts": news_conflicts,
        "text_fields": list(keep_fields),
        "train_file_impressions": n_train_file,
        "train_impressions_before_cap": train_before_cap,
        "max_train_impressions": cfg.max_train_impressions,
        "seed": cfg.seed,
        "notes": notes,
    }
    return catalogue, examples, info


def _stats_info(stats: dict, expander: _Expander) -> dict:
    """The counts a pass over the impressions gathered, for ``info``."""
    all_users = set().union(*(s["users"] for s in stats.values()))
    info = {"users": len(all_users),
            "missing_news": {**expander.missing,
                             "unique_ids": len(expander.missing_ids),
                             "sample_ids": sorted(expander.missing_ids)[:_SAMPLE_IDS]}}
    for key in ("impressions", "examples", "positives", "single_class_impressions",
                "empty_impressions"):
        info[key] = {split: s[key] for split, s in stats.items()}
    info["users_per_split"] = {split: len(s["users"]) for split, s in stats.items()}
    return info


def load(data_dir: str, cfg: MindConfig) -> SplitData:
    """Loads MIND behaviours and news from ``data_dir`` into train/validation/test.

    See the module docstring for the layout, the split rules and what ``info`` records.
    Raises DataError for bad input and ConfigError for bad ``cfg`` values.
    """
    catalogue, examples, info = stream(data_dir, cfg)
    splits = {"train": [], "validation": [], "test": []}
    for example in examples():
        splits[example.split].append(example)
    return SplitData(catalogue=catalogue, splits=splits, info=info)



