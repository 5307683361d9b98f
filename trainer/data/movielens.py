"""MovieLens as canonical implicit-feedback impressions (see docs/data.md, "MovieLens").

Three ways in, one conversion out:

* :func:`load` reads a local GroupLens directory. Layouts (``variant="auto"`` detects them):

  ==================  =========================================================  ========
  variant             files                                                      encoding
  ==================  =========================================================  ========
  ml-100k             ``u.data`` (tab: user item rating ts), ``u.item`` (``|``,   Latin-1
                      5 fields + one 0/1 flag per genre), ``u.genre`` (optional)
  ml-1m               ``ratings.dat``, ``movies.dat`` (``::`` separated)          Latin-1
  ml-latest-small,    ``ratings.csv``, ``movies.csv``, ``tags.csv`` (optional),    UTF-8
  ml-25m              with header rows
  ==================  =========================================================  ========

* :func:`download` fetches and unpacks an official GroupLens zip (checksum-verified) and
  returns the directory to pass to :func:`load`. Nothing downloads unless this is called.
* :func:`from_tfds` reads the TensorFlow Datasets builders ``movielens/<version>-ratings``
  and ``movielens/<version>-movies``.

Conversion (identical for all three):

* Catalogue: ``title`` (the release year split off into ``year``: "Toy Story (1995)" ->
  "Toy Story" + "1995"), ``categories`` (genres joined with ", "; "(no genres listed)" and
  "unknown" give ""), ``tags`` (the ``cfg.max_tags`` most applied user tags, ", "-joined,
  when the variant has tags and ``cfg.use_tags``). Items without a title are left out and
  counted in ``info["skipped"]``, as are ratings of movies missing from the movies file.
* Tags and the split (``cfg.tags_until``, :func:`apply_tags`): with ``"train"`` (the
  default) a tag application reaches the text only if it lies in its user's training
  period -- at or before their last training positive, never on their own validation or
  test movie -- so the text reads nothing the split holds out; ``"all"`` takes every
  application. ``info["tags"]`` counts what was kept and what fell outside training time.
* Implicit feedback: a rating >= ``cfg.positive_threshold`` is a positive. Each user's
  positives are sorted by (timestamp, item id); the last goes to test, the one before to
  validation, the rest to train (chronological leave-last-out). Users with fewer than
  ``cfg.min_positives`` positives are dropped and counted.
* History of an example: the user's strictly earlier positives, most recent last, capped
  at :data:`HISTORY_CAP` (the input pipeline trims further).
* Train: one impression per train positive (``f"{user}-train-{k}"``): the positive plus
  ``cfg.negatives_per_positive`` sampled negatives, uniform or popularity-weighted (by
  number of ratings). Validation/test: one impression per user (``f"{user}-validation"``,
  ``f"{user}-test"``): the held-out positive plus ``cfg.eval_negatives`` negatives drawn
  uniformly, whatever the training sampler, so evaluation is comparable across configs.
  A negative is never an item the user rated *at all*: a low rating is still a rating
  (the user saw the movie), so it is neither a positive nor a safe "not interested"
  sample, and excluding every rated item also keeps the held-out validation/test items
  out of training negatives. The positive sits at a seeded random position in its
  impression so ties in a scorer cannot favour it.
* Determinism: each training impression, and each user's evaluation pair, draws from its
  own generator seeded by ``(cfg.seed, purpose, crc32(user_id), k)``, so the same seed
  gives the same negatives whatever the model, the other users or ``max_train_examples``
  (a subset keeps its impressions unchanged); another seed gives other negatives.
* ``cfg.max_train_examples > 0`` keeps a seeded subset of whole training impressions:
  ``max_train_examples // (1 + negatives_per_positive)`` of them (``info["train_subset"]``).

Memory: ratings are read streaming with the ``csv`` module into typed buffers and kept
as numpy arrays -- 20 bytes a rating (int32 user, int32 item, float32 rating, int64
timestamp; int64 because int32 seconds overflow in 2038), about 0.5 GB for ml-25m's 25M
ratings plus an int64 sort index (0.2 GB) while splitting. The examples are generated
user by user (:func:`iter_examples`); :func:`load` collects them into lists, which suits
ml-100k / ml-1m / ml-latest-small (ml-latest-small: ~360k examples, a few hundred MB of
Python objects) but not ml-25m (~60M examples): stream :func:`iter_examples` to disk
there.
"""

from __future__ import annotations

import array
import collections
import csv
import dataclasses
import math
import os
import re
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from trainer.config import MovieLensConfig
from trainer.data import sampling
from trainer.data.canonical import (Catalogue, DataError, Example, Item, SplitData,
                                        decoded_lines)

VARIANTS = ("ml-100k", "ml-1m", "ml-latest-small", "ml-25m")
OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/{variant}.zip"
# sha256 of the official zips, as recorded in tensorflow-datasets 4.9.10
# (url_checksums/movielens.txt). ml-latest-small is a "development" dataset GroupLens may
# regenerate; if its zip ever changes, pass file_hash=None (or the new hash) explicitly.
OFFICIAL_SHA256 = {
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    "ml-latest-small": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
    "ml-25m": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
}
TFDS_VERSIONS = {"ml-100k": "100k", "ml-1m": "1m", "ml-latest-small": "latest-small",
                 "ml-25m": "25m", "ml-20m": "20m"}

HISTORY_CAP = 50
# ml-100k's u.genre, used when that file is absent.
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy",
                 "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
                 "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
# Genre labels that carry no information: they become an empty `categories` field.
_EMPTY_GENRES = frozenset({"(no genres listed)", "unknown", "Unknown"})

_LAYOUTS = {  # variant -> (required files, optional files)
    "ml-100k": (("u.data", "u.item"), ("u.genre",)),
    "ml-1m": (("ratings.dat", "movies.dat"), ()),
    "ml-latest-small": (("ratings.csv", "movies.csv"), ("tags.csv",)),
    "ml-25m": (("ratings.csv", "movies.csv"), ("tags.csv",)),
}
_RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
_MOVIES_HEADER = ["movieId", "title", "genres"]
_TAGS_HEADER = ["userId", "movieId", "tag", "timestamp"]

# data.movielens.tags_until: which tag applications may reach the item text (apply_tags).
TAGS_UNTIL = ("train", "all")

_YEAR_RE = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4}(?:\s*[-\u2013]\s*(?:\d{4})?)?)\)$")


# ----------------------------------------------------------------------------- item text

def split_title(raw: str) -> tuple[str, str]:
    """Splits a trailing "(year)" off a MovieLens title.

    >>> split_title("Toy Story (1995)")
    ('Toy Story', '1995')
    >>> split_title("Babylon 5 ")
    ('Babylon 5', '')

    Year ranges of series are kept as written ("Death Note: Desu nôto (2006–2007)").
    """
    text = " ".join(str(raw).split())
    match = _YEAR_RE.match(text)
    if match is None:
        return text, ""
    return match.group("title").strip(), match.group("year")


def join_genres(genres: Iterable[str]) -> str:
    """Genres as ``categories`` text: ", "-joined, placeholders ("(no genres listed)") dropped."""
    return ", ".join(g.strip() for g in genres if g.strip() and g.strip() not in _EMPTY_GENRES)


def _item_fields(raw_title: str, genres: Iterable[str]) -> dict:
    title, year = split_title(raw_title)
    return {"title": title, "year": year, "categories": join_genres(genres), "tags": ""}


# ----------------------------------------------------------------------------- file reading

def _exists(path: str) -> bool:
    return tf.io.gfile.exists(path)


def _decoded_lines(path: str, encoding: str) -> Iterator[str]:
    """A file's decoded lines, ends kept (for csv.reader); errors name the line."""
    fix = (f"MovieLens CSV files are UTF-8 (.dat and u.* files Latin-1); re-save the file as "
           f"{encoding}")
    for _, text in decoded_lines(path, encoding, fix=fix):
        yield text


def _lines(path: str, encoding: str) -> Iterator[tuple[int, str]]:
    """(line number, line without its end) for every non-blank line."""
    for line_no, line in enumerate(_decoded_lines(path, encoding), start=1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield line_no, line


def _csv_rows(path: str, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    """Rows of a headed UTF-8 CSV file, checking the header and each row's length."""
    reader = csv.reader(_decoded_lines(path, "utf-8"))
    try:
        first = next(reader, None)
        if first is None:
            raise DataError(f"{path}: file is empty; expected the header {','.join(header)}")
        first = [h.strip().lstrip("\ufeff") for h in first]
        if first[:len(header)] != header:
            raise DataError(f"{path}:1: header is {','.join(first)!r}; expected "
                            f"{','.join(header)!r} -- is this the right MovieLens file?")
        width = len(first)
        for record in reader:
            if not record or all(not v.strip() for v in record):
                continue
            if len(record) != width:
                raise DataError(f"{path}:{reader.line_num}: malformed row: {len(record)} "
                                f"fields where the header has {width}")
            yield reader.line_num, record
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {err}") from None


class _RatingBuffer:
    """Streams ratings into compact typed buffers (no per-row Python objects kept)."""

    def __init__(self):
        self.user = array.array("i")
        self.item = array.array("i")
        self.rating = array.array("f")
        self.timestamp = array.array("q")

    def add(self, path: str, line: int, user: str, item: str, rating: str, ts: str) -> None:
        try:
            value = float(rating)
            if not math.isfinite(value):
                raise ValueError
        except ValueError:
            raise DataError(f"{path}:{line}: rating {rating!r} is not a number") from None
        try:
            u, i, t = int(user), int(item), int(float(ts)) if "." in ts else int(ts)
            self.user.append(u)
            self.item.append(i)
            self.timestamp.append(t)
        except (ValueError, OverflowError):
            raise DataError(f"{path}:{line}: user id {user!r}, movie id {item!r} and timestamp "
                            f"{ts!r} must be integers (32-bit ids)") from None
        self.rating.append(value)

    def arrays(self, path: str) -> tuple[np.ndarray, ...]:
        if not self.user:
            raise DataError(f"{path}: no ratings found")
        return (np.frombuffer(self.user, dtype=np.int32),
                np.frombuffer(self.item, dtype=np.int32),
                np.frombuffer(self.rating, dtype=np.float32),
                np.frombuffer(self.timestamp, dtype=np.int64))


def _read_100k(data_dir: str, skipped: collections.Counter):
    genre_path = os.path.join(data_dir, "u.genre")
    genres = list(ML100K_GENRES)
    if _exists(genre_path):
        genres = []
        for line_no, line in _lines(genre_path, "latin-1"):
            parts = line.split("|")
            if len(parts) != 2 or not parts[1].strip().isdigit():
                raise DataError(f"{genre_path}:{line_no}: expected 'name|index', got {line!r}")
            genres.append(parts[0])
    item_path = os.path.join(data_dir, "u.item")
    width = 5 + len(genres)
    movies = {}
    for line_no, line in _lines(item_path, "latin-1"):
        parts = line.split("|")
        if len(parts) != width:
            raise DataError(f"{item_path}:{line_no}: {len(parts)} '|'-separated fields; "
                            f"expected {width} (id|title|release date|video release date|IMDb "
                            f"URL| then {len(genres)} genre flags)")
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataError(f"{item_path}:{line_no}: genre flags must be 0 or 1, got {flags}")
        movie_id = _parse_id(parts[0], item_path, line_no)
        title = parts[1]
        # ml-100k's movie 267 is the placeholder title "unknown": no text to read.
        if title.strip().lower() == "unknown":
            title = ""
        movies[movie_id] = _item_fields(title, [g for g, f in zip(genres, flags) if f == "1"])
    ratings_path = os.path.join(data_dir, "u.data")
    buf = _RatingBuffer()
    for line_no, line in _lines(ratings_path, "latin-1"):
        parts = line.split()
        if len(parts) != 4:
            raise DataError(f"{ratings_path}:{line_no}: {len(parts)} tab-separated fields; "
                            "expected 4 (user id, item id, rating, timestamp)")
        buf.add(ratings_path, line_no, *parts)
    return movies, buf.arrays(ratings_path), None


def _read_1m(data_dir: str, skipped: collections.Counter):
    movies_path = os.path.join(data_dir, "movies.dat")
    movies = {}
    for line_no, line in _lines(movies_path, "latin-1"):
        parts = line.split("::")
        if len(parts) != 3:
            raise DataError(f"{movies_path}:{line_no}: {len(parts)} '::'-separated fields; "
                            "expected 3 (MovieID::Title::Genres)")
        movies[_parse_id(parts[0], movies_path, line_no)] = _item_fields(
            parts[1], parts[2].split("|"))
    ratings_path = os.path.join(data_dir, "ratings.dat")
    buf = _RatingBuffer()
    for line_no, line in _lines(ratings_path, "latin-1"):
        parts = line.split("::")
        if len(parts) != 4:
            raise DataError(f"{ratings_path}:{line_no}: {len(parts)} '::'-separated fields; "
                            "expected 4 (UserID::MovieID::Rating::Timestamp)")
        buf.add(ratings_path, line_no, *parts)
    return movies, buf.arrays(ratings_path), None


def _read_csv_variant(data_dir: str, skipped: collections.Counter, use_tags: bool):
    movies_path = os.path.join(data_dir, "movies.csv")
    movies = {}
    for line_no, row in _csv_rows(movies_path, _MOVIES_HEADER):
        movies[_parse_id(row[0], movies_path, line_no)] = _item_fields(row[1], row[2].split("|"))
    ratings_path = os.path.join(data_dir, "ratings.csv")
    buf = _RatingBuffer()
    for line_no, row in _csv_rows(ratings_path, _RATINGS_HEADER):
        buf.add(ratings_path, line_no, *row[:4])
    tags = None
    tags_path = os.path.join(data_dir, "tags.csv")
    if use_tags and _exists(tags_path):
        tags = TagLog()
        for line_no, row in _csv_rows(tags_path, _TAGS_HEADER):
            tag = " ".join(row[2].split())
            if not tag:
                skipped["tags_empty"] += 1
                continue
            movie_id = _parse_id(row[1], tags_path, line_no)
            if movie_id not in movies:
                skipped["tags_unknown_item"] += 1
                continue
            if not movies[movie_id]["title"]:
                skipped["tags_item_without_title"] += 1
                continue
            tags.add(tags_path, line_no, row[0], movie_id, tag, row[3])
    return movies, buf.arrays(ratings_path), tags


class TagLog:
    """Tag applications (user, movie, tag, timestamp) as compact arrays, kept until the
    split is known: which of them may reach the item text depends on it
    (``cfg.tags_until``, :func:`apply_tags`). Distinct tag strings are stored once."""

    def __init__(self):
        self.user = array.array("q")
        self.movie = array.array("q")
        self.timestamp = array.array("q")
        self.tag = array.array("i")  # index into self.names
        self.names: list = []
        self._index: dict = {}

    def __len__(self) -> int:
        return len(self.user)

    def add(self, path: str, line: int, user: str, movie_id: int, tag: str, ts: str) -> None:
        try:
            u, t = int(user), int(float(ts)) if "." in ts else int(ts)
            # Range-checked here, so a bad row never leaves the arrays half-appended.
            array.array("q", (u, t))
        except (ValueError, OverflowError):
            raise DataError(f"{path}:{line}: user id {user!r} and timestamp {ts!r} must be "
                            "integers") from None
        self.user.append(u)
        self.timestamp.append(t)
        self.movie.append(movie_id)
        index = self._index.setdefault(tag, len(self.names))
        if index == len(self.names):
            self.names.append(tag)
        self.tag.append(index)


def _parse_id(text: str, path: str, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"{path}:{line}: movie id {text!r} is not an integer") from None


def top_tags(tags: Iterable[str], max_tags: int) -> str:
    """The ``max_tags`` most applied tags, ", "-joined.

    Tags are counted case-insensitively and shown as first written; ties go alphabetically.
    """
    counts: collections.Counter = collections.Counter()
    shown = {}
    for tag in tags:
        key = tag.casefold()
        counts[key] += 1
        shown.setdefault(key, tag)
    ranked = sorted(counts, key=lambda k: (-counts[k], k))[:max(max_tags, 0)]
    return ", ".join(shown[k] for k in ranked)


# ----------------------------------------------------------------------------- layouts

def detect_variant(data_dir: str) -> str:
    """The MovieLens variant whose files ``data_dir`` holds; DataError if none fits."""
    if all(_exists(os.path.join(data_dir, f)) for f in _LAYOUTS["ml-100k"][0]):
        return "ml-100k"
    if all(_exists(os.path.join(data_dir, f)) for f in _LAYOUTS["ml-1m"][0]):
        return "ml-1m"
    if all(_exists(os.path.join(data_dir, f)) for f in _LAYOUTS["ml-latest-small"][0]):
        # Same format; the name only labels data_info. ml-25m ships the tag genome.
        base = os.path.basename(os.path.normpath(data_dir))
        if "25m" in base or _exists(os.path.join(data_dir, "genome-scores.csv")):
            return "ml-25m"
        return "ml-latest-small"
    raise DataError(f"{data_dir}: no MovieLens layout found; expected one of {_layout_text()}"
                    f" (found: {_listing(data_dir)})")


def _layout_text(variants: Iterable[str] = VARIANTS) -> str:
    return "; ".join(f"{v}: {' + '.join(_LAYOUTS[v][0])}" for v in variants)


def _listing(data_dir: str) -> str:
    if not tf.io.gfile.isdir(data_dir):
        return "directory does not exist"
    names = sorted(tf.io.gfile.listdir(data_dir))
    return ", ".join(n.rstrip("/") for n in names[:12]) + (" ..." if len(names) > 12 else "") \
        if names else "empty directory"


def resolve_data_dir(data_dir: str, variant: str = "auto") -> str:
    """``data_dir`` or, when the files sit one level down (an unpacked zip), that folder."""
    wanted = VARIANTS if variant == "auto" else (variant,)
    for v in wanted:
        if all(_exists(os.path.join(data_dir, f)) for f in _LAYOUTS[v][0]):
            return data_dir
    for v in wanted:
        child = os.path.join(data_dir, v)
        if all(_exists(os.path.join(child, f)) for f in _LAYOUTS[v][0]):
            return child
    return data_dir


def read_movielens(data_dir: str, cfg: MovieLensConfig):
    """Parses a local MovieLens directory.

    Returns ``(variant, data_dir, catalogue, ratings, untitled, skipped, tags)``:
    ``ratings`` is ``(user, item, rating, timestamp)`` numpy arrays of raw MovieLens ids,
    ``untitled`` the ids of movies left out for lack of a title, ``skipped`` counts by
    reason, ``data_dir`` the folder actually read, ``tags`` a :class:`TagLog` (None when
    the variant has no tags or ``cfg.use_tags`` is off). The catalogue's ``tags`` fields
    are still empty: which applications may fill them depends on the split
    (:func:`apply_tags`, after :func:`prepare`).
    """
    _check_cfg(cfg)
    variant = cfg.variant
    if variant not in ("auto",) + VARIANTS:
        raise DataError(f"unknown MovieLens variant {variant!r}; use one of "
                        f"{('auto',) + VARIANTS}")
    data_dir = resolve_data_dir(data_dir, variant)
    if variant == "auto":
        variant = detect_variant(data_dir)
    else:
        missing = [f for f in _LAYOUTS[variant][0] if not _exists(os.path.join(data_dir, f))]
        if missing:
            raise DataError(f"{data_dir}: not a {variant} directory: missing {missing}; "
                            f"{variant} needs {' + '.join(_LAYOUTS[variant][0])} (found: "
                            f"{_listing(data_dir)}). Set data.movielens.variant=auto to "
                            "detect the layout")
    skipped: collections.Counter = collections.Counter()
    if variant == "ml-100k":
        movies, ratings, tags = _read_100k(data_dir, skipped)
    elif variant == "ml-1m":
        movies, ratings, tags = _read_1m(data_dir, skipped)
    else:
        movies, ratings, tags = _read_csv_variant(data_dir, skipped, cfg.use_tags)
    catalogue = Catalogue()
    for movie_id in sorted(movies):
        fields = movies[movie_id]
        if not fields["title"]:
            skipped["items_without_title"] += 1
            continue
        catalogue[str(movie_id)] = Item(str(movie_id), fields, provider="")
    untitled = np.array([m for m, f in movies.items() if not f["title"]], dtype=np.int64)
    return variant, data_dir, catalogue, ratings, untitled, skipped, tags


# ----------------------------------------------------------------------------- splitting

@dataclasses.dataclass
class _Prepared:
    """Ratings sorted per user by (timestamp, item), as dense codes, ready to split."""

    item_ids: list  # item code -> catalogue id
    user_ids: list  # user code -> user id string
    user: np.ndarray  # int32 user codes, grouped, then (timestamp, item) order
    item: np.ndarray  # int32 item codes
    positive: np.ndarray  # bool
    timestamp: np.ndarray  # int64
    starts: np.ndarray  # per user code: first row
    ends: np.ndarray
    pos_counts: np.ndarray  # positives per user code
    kept: np.ndarray  # bool per user code
    popularity_cdf: np.ndarray  # cumulative rating counts per item code (popularity sampling)
    train_selected: np.ndarray | None  # bool per global train impression, None = all
    info: dict


def _sorted_keys(keys: Iterable[str], numeric: bool) -> np.ndarray:
    if numeric:
        return np.array(sorted(int(k) for k in keys), dtype=np.int64)
    return np.array(sorted(keys), dtype=str)


def prepare(catalogue: Catalogue, users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
            timestamps: np.ndarray, cfg: MovieLensConfig, skipped: collections.Counter,
            untitled: np.ndarray | None = None) -> _Prepared:
    """Maps raw ids to dense codes, drops unusable rows (counted) and sorts per user.

    ``items`` holds raw movie ids whose ``str()`` is a catalogue key (ints for files,
    strings for TFDS); ``users`` raw user ids (ints or strings). Ratings of ``untitled``
    movies (in the movies file, but without a title) are counted apart from ratings of
    movies the movies file lacks.
    """
    _check_cfg(cfg)
    if not len(catalogue):
        raise DataError("no movies with a title were found; check the movies file")
    numeric = items.dtype.kind in "iu"
    keys = _sorted_keys(catalogue.keys(), numeric)
    item_ids = [str(k) for k in keys]
    n_items = len(item_ids)
    n_read = len(items)
    codes = np.searchsorted(keys, items)
    known = keys[np.minimum(codes, n_items - 1)] == items
    unknown = int(n_read - np.count_nonzero(known))
    if unknown:
        of_untitled = 0
        if untitled is not None and len(untitled):
            of_untitled = int(np.count_nonzero(np.isin(items[~known], untitled)))
        skipped["ratings_item_without_title"] += of_untitled
        skipped["ratings_unknown_item"] += unknown - of_untitled
    if not known.all():
        users, codes, ratings, timestamps = (users[known], codes[known], ratings[known],
                                             timestamps[known])
    codes = codes.astype(np.int32)
    user_keys, user = np.unique(users, return_inverse=True)
    user = user.astype(np.int32).reshape(-1)
    user_ids = [str(k) for k in user_keys]
    # Duplicated (user, item) ratings: keep the latest one, so an item is never both in a
    # user's history and their held-out positive.
    order = np.lexsort((timestamps, codes, user))
    same = (user[order][1:] == user[order][:-1]) & (codes[order][1:] == codes[order][:-1])
    if same.any():
        skipped["duplicate_ratings"] += int(np.count_nonzero(same))
        keep = np.ones(len(order), dtype=bool)
        keep[order[:-1][same]] = False
        user, codes, ratings, timestamps = user[keep], codes[keep], ratings[keep], \
            timestamps[keep]
    del order, same
    popularity = np.bincount(codes, minlength=n_items).astype(np.float64)
    order = np.lexsort((codes, timestamps, user))
    user, codes, timestamps = user[order], codes[order], timestamps[order]
    positive = ratings[order] >= cfg.positive_threshold
    del order
    n_users = len(user_ids)
    bounds = np.flatnonzero(np.diff(user)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.concatenate([bounds, [len(user)]]).astype(np.int64)
    pos_counts = np.bincount(user[positive], minlength=n_users)
    kept = pos_counts >= cfg.min_positives
    train_counts = np.where(kept, np.maximum(pos_counts - 2, 0), 0)
    total_train = int(train_counts.sum())
    selected, subset_info = None, None
    if cfg.max_train_examples > 0:
        keep_impressions = max(1, cfg.max_train_examples // (1 + cfg.negatives_per_positive))
        subset_info = {"max_train_examples": cfg.max_train_examples,
                       "impressions_total": total_train,
                       "impressions_kept": min(keep_impressions, total_train)}
        if keep_impressions < total_train:
            rng = np.random.default_rng([cfg.seed % 2**63, sampling.PURPOSE_SUBSET])
            selected = np.zeros(total_train, dtype=bool)
            selected[rng.choice(total_train, size=keep_impressions, replace=False)] = True
    info = {
        "ratings_used": int(len(user)),
        "users": {"total": n_users, "kept": int(kept.sum()),
                  "dropped_min_positives": int(n_users - kept.sum())},
        "items": n_items,
        "positives": {"total": int(positive.sum()), "kept_users": int(pos_counts[kept].sum())},
        "train_subset": subset_info,
    }
    return _Prepared(item_ids=item_ids, user_ids=user_ids, user=user, item=codes,
                     positive=positive, timestamp=timestamps, starts=starts, ends=ends,
                     pos_counts=pos_counts, kept=kept,
                     popularity_cdf=np.cumsum(popularity), train_selected=selected, info=info)


def _check_cfg(cfg: MovieLensConfig) -> None:
    if cfg.min_positives < 1:
        raise DataError(f"data.movielens.min_positives must be >= 1, got {cfg.min_positives}")
    if cfg.negatives_per_positive < 0 or cfg.eval_negatives < 0:
        raise DataError("data.movielens.negatives_per_positive and eval_negatives must be >= 0")
    if cfg.negative_sampling not in ("uniform", "popularity"):
        raise DataError(f"data.movielens.negative_sampling must be 'uniform' or 'popularity', "
                        f"got {cfg.negative_sampling!r}")
    if cfg.tags_until not in TAGS_UNTIL:
        raise DataError(f"data.movielens.tags_until must be one of {TAGS_UNTIL}, got "
                        f"{cfg.tags_until!r}")


def _positive_rows(prep: _Prepared, code: int) -> np.ndarray:
    """Rows of user ``code``'s positives in ``prep``, oldest first."""
    start = prep.starts[code]
    return np.flatnonzero(prep.positive[start:prep.ends[code]]) + start


def _split_positions(n: int) -> tuple[range, list]:
    """Chronological leave-last-out over a user's ``n`` positives (oldest first): the
    training positions and the held-out ``(split, position)`` pairs (the last is test, the
    one before validation)."""
    held = [(split, j) for split, j in (("validation", n - 2), ("test", n - 1)) if j >= 0]
    return range(max(n - 2, 0)), held


def apply_tags(catalogue: Catalogue, tags: TagLog, prep: _Prepared,
               cfg: MovieLensConfig) -> dict:
    """Fills each item's ``tags`` field from the tag applications ``cfg.tags_until`` admits
    (the ``cfg.max_tags`` most applied, :func:`top_tags`); returns ``info["tags"]``.

    ``"train"`` keeps an application only if it falls in its user's *training* period, as
    the split defines it for that user's ratings: at or before the user's last training
    positive, and never on one of the user's own held-out (validation or test) movies.
    A user with held-out positives but no training positive keeps no tags; a user with no
    held-out interaction at all (dropped by ``min_positives``, or tagging without rating)
    keeps all of theirs, since nothing of theirs is evaluated. So the item text is a pure
    function of the training data plus such users' tags. ``"all"`` keeps every application
    (tags read across the split; the counts of what ``"train"`` would drop are recorded
    either way, under ``outside_training_time``).
    """
    cutoff, held = {}, {}  # evaluated user id -> last training time (None: none), held-out ids
    for code in np.flatnonzero(prep.kept):
        rows = _positive_rows(prep, code)
        train_js, held_js = _split_positions(len(rows))
        user_id = prep.user_ids[code]
        held[user_id] = {prep.item_ids[prep.item[rows[j]]] for _, j in held_js}
        cutoff[user_id] = int(prep.timestamp[rows[train_js[-1]]]) if len(train_js) else None
    train_only = cfg.tags_until == "train"
    outside: collections.Counter = collections.Counter()
    admitted = collections.defaultdict(list)  # movie id -> its admitted tags, file order
    unevaluated = 0
    for user, movie, stamp, index in zip(tags.user, tags.movie, tags.timestamp, tags.tag):
        user_id, movie_id = str(user), str(movie)
        reason = None
        if user_id not in held:
            unevaluated += 1
        elif movie_id in held[user_id]:
            reason = "own_held_out_item"
        elif cutoff[user_id] is None:
            reason = "no_training_positive"
        elif stamp > cutoff[user_id]:
            reason = "after_last_training_positive"
        if reason is not None:
            outside[reason] += 1
            if train_only:
                continue
        admitted[movie_id].append(tags.names[index])
    for movie_id, names in admitted.items():
        catalogue[movie_id].fields["tags"] = top_tags(names, cfg.max_tags)
    kept = sum(map(len, admitted.values()))
    return {"until": cfg.tags_until, "applications": len(tags), "kept": kept,
            "dropped": len(tags) - kept,
            "outside_training_time": {key: outside[key] for key in (
                "own_held_out_item", "after_last_training_positive", "no_training_positive")},
            "from_users_without_held_out": unevaluated}


def iter_examples(prep: _Prepared, cfg: MovieLensConfig) -> Iterator[Example]:
    """Yields every example, user by user (stream these to disk for ml-25m).

    Updates ``prep.info`` with short-sample counts as it goes.
    """
    item_ids, n_items = prep.item_ids, len(prep.item_ids)
    cdf = prep.popularity_cdf if cfg.negative_sampling == "popularity" else None
    shorts = collections.Counter()
    train_index = 0
    for code in range(len(prep.user_ids)):
        if not prep.kept[code]:
            continue
        user_id = prep.user_ids[code]
        rated = set(prep.item[prep.starts[code]:prep.ends[code]].tolist())
        pos_rows = _positive_rows(prep, code)
        positives = prep.item[pos_rows].tolist()
        stamps = prep.timestamp[pos_rows].tolist()
        n = len(positives)
        ids = [item_ids[c] for c in positives]

        def history(j):
            return tuple(ids[max(0, j - HISTORY_CAP):j])

        train_js, held_js = _split_positions(n)
        for j in train_js:
            selected = prep.train_selected is None or prep.train_selected[train_index]
            train_index += 1
            if not selected:
                continue
            # One generator per impression: a subset keeps its impressions unchanged.
            train_rng = sampling.user_rng(cfg.seed, sampling.PURPOSE_TRAIN, user_id, j)
            negs = sampling.sample_negatives(train_rng, cfg.negatives_per_positive, rated,
                                             n_items, cdf)
            shorts["train_impressions_short_of_negatives"] += len(negs) < \
                cfg.negatives_per_positive
            yield from sampling.impression(train_rng, user_id, f"{user_id}-train-{j}",
                                           history(j), positives[j], negs, stamps[j],
                                           "train", item_ids)
        eval_rng = sampling.user_rng(cfg.seed, sampling.PURPOSE_EVAL, user_id)
        for split, j in held_js:
            negs = sampling.sample_negatives(eval_rng, cfg.eval_negatives, rated, n_items, None)
            shorts["eval_impressions_short_of_negatives"] += len(negs) < cfg.eval_negatives
            yield from sampling.impression(eval_rng, user_id, f"{user_id}-{split}",
                                           history(j), positives[j], negs, stamps[j], split,
                                           item_ids)
    prep.info.update(shorts)
    for key in ("train_impressions_short_of_negatives", "eval_impressions_short_of_negatives"):
        prep.info.setdefault(key, 0)


def build_split_data(catalogue: Catalogue, prep: _Prepared, cfg: MovieLensConfig,
                     info: dict) -> SplitData:
    """Collects :func:`iter_examples` into a :class:`SplitData` with full ``info``."""
    splits = {"train": [], "validation": [], "test": []}
    for example in iter_examples(prep, cfg):
        splits[example.split].append(example)
    info = dict(info)
    info.update(prep.info)
    info["examples"] = {name: len(rows) for name, rows in splits.items()}
    info["impressions"] = {name: len({e.impression_id for e in rows})
                           for name, rows in splits.items()}
    info["settings"] = {
        "positive_threshold": cfg.positive_threshold, "min_positives": cfg.min_positives,
        "negatives_per_positive": cfg.negatives_per_positive,
        "negative_sampling": cfg.negative_sampling, "eval_negatives": cfg.eval_negatives,
        "eval_negative_sampling": "uniform", "seed": cfg.seed, "history_cap": HISTORY_CAP,
        "max_tags": cfg.max_tags, "use_tags": cfg.use_tags, "tags_until": cfg.tags_until}
    return SplitData(catalogue=catalogue, splits=splits, info=info)


# ----------------------------------------------------------------------------- entry points

def load(data_dir: str, cfg: MovieLensConfig) -> SplitData:
    """Reads a local MovieLens directory into canonical train/validation/test impressions.

    Example::

        data = load("../shared/data/ml-latest-small", MovieLensConfig(eval_negatives=99))
        data.info["users"]  # {"total": 610, "kept": ..., "dropped_min_positives": ...}

    ``info`` holds ``variant``, ``users``, ``items``, ``positives``, ``examples`` and
    ``impressions`` per split, ``skipped`` (counts by reason) and the settings used.
    """
    catalogue, prep, info = _read_and_prepare(data_dir, cfg)
    return build_split_data(catalogue, prep, cfg, info)


def stream(data_dir: str, cfg: MovieLensConfig):
    """:func:`load` without collecting the examples: ``(catalogue, examples, info)`` where
    ``examples()`` yields them user by user (``python -m trainer.task prepare``). The
    ratings are held as typed arrays (about 21 bytes each: ~0.5 GB for ml-25m), the
    examples never; ``info`` gains the short-sample counts once a pass ends."""
    catalogue, prep, info = _read_and_prepare(data_dir, cfg)

    def examples():
        yield from iter_examples(prep, cfg)
        info.update(prep.info)
    return catalogue, examples, info


def _read_and_prepare(data_dir: str, cfg: MovieLensConfig):
    variant, data_dir, catalogue, ratings, untitled, skipped, tags = read_movielens(
        data_dir, cfg)
    users, items, values, stamps = ratings
    prep = prepare(catalogue, users, items, values, stamps, cfg, skipped, untitled)
    tag_info = apply_tags(catalogue, tags, prep, cfg) if tags is not None else None
    info = {"source": "files", "variant": variant, "data_dir": data_dir,
            "ratings_read": int(len(users)),
            "tags_used": tags is not None,
            "items_with_tags": sum(1 for it in catalogue.values() if it.fields["tags"]),
            "tags": tag_info}
    info["skipped"] = _skipped_dict(skipped)
    return catalogue, prep, info


def _skipped_dict(skipped: collections.Counter) -> dict:
    out = {key: 0 for key in ("items_without_title", "ratings_item_without_title",
                              "ratings_unknown_item", "duplicate_ratings")}
    out.update(skipped)
    return dict(out)


def download(variant: str, cache_dir: str, url: str | None = None,
             file_hash: str | None = None) -> str:
    """Downloads and unpacks a GroupLens zip; returns the directory to :func:`load`.

    Without ``url`` the official ``https://files.grouplens.org/datasets/movielens/<variant>
    .zip`` is fetched and checked against :data:`OFFICIAL_SHA256` (unless ``file_hash`` is
    given). With ``url`` (a mirror, or a ``file://`` zip in tests) only ``file_hash``, if
    any, is checked. A cached download is reused.
    """
    import keras  # pylint: disable=import-outside-toplevel

    if variant not in VARIANTS:
        raise DataError(f"unknown MovieLens variant {variant!r}; use one of {VARIANTS}")
    if url is None:
        url = OFFICIAL_URL.format(variant=variant)
        file_hash = file_hash or OFFICIAL_SHA256[variant]
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
    # get_file silently falls back to /tmp/.keras when cache_dir does not exist yet.
    os.makedirs(cache_dir, exist_ok=True)
    try:
        extracted = keras.utils.get_file(
            fname=f"{variant}.zip", origin=url, file_hash=file_hash, extract=True,
            cache_dir=cache_dir, cache_subdir="movielens")
    except ValueError as err:  # keras raises ValueError for a checksum mismatch
        raise DataError(f"download of {url} failed: {err}") from None
    except Exception as err:  # pylint: disable=broad-except  # urllib failures come as Exception
        raise DataError(f"download of {url} failed ({err}); check the URL and the network, "
                        f"or unpack {variant}.zip yourself and point data.data_dir at it"
                        ) from None
    data_dir = resolve_data_dir(extracted, variant)
    missing = [f for f in _LAYOUTS[variant][0] if not _exists(os.path.join(data_dir, f))]
    if missing:
        raise DataError(f"{url}: the archive unpacked to {extracted} lacks {missing}")
    return data_dir


def tfds_to_canonical(rating_batches: Iterable[dict], movie_records: Iterable[dict],
                      genre_names: list, cfg: MovieLensConfig, variant: str = "tfds"
                      ) -> SplitData:
    """Converts TFDS ``movielens/*`` records (as ``tfds.as_numpy`` yields them).

    ``rating_batches``: dicts with ``user_id``, ``movie_id`` (bytes), ``user_rating``
    (float), ``timestamp`` (int) -- each value a scalar or a batch of them.
    ``movie_records``: dicts with ``movie_id``, ``movie_title`` (bytes) and
    ``movie_genres`` (ClassLabel indices into ``genre_names``). TFDS has no tags.
    """
    skipped: collections.Counter = collections.Counter()
    movies = {}
    for record in movie_records:
        movie_id = _tfds_id(record["movie_id"])
        genres = [genre_names[int(g)] for g in np.atleast_1d(record["movie_genres"])]
        movies[movie_id] = _item_fields(_text(record["movie_title"]), genres)
    catalogue = Catalogue()
    for movie_id, fields in movies.items():
        if not fields["title"]:
            skipped["items_without_title"] += 1
            continue
        catalogue[movie_id] = Item(movie_id, fields, provider="")
    untitled = [m for m, f in movies.items() if not f["title"]]
    users, items, values, stamps = [], [], [], []
    for batch in rating_batches:
        users.append(np.array([_tfds_id(u) for u in np.atleast_1d(batch["user_id"])]))
        items.append(np.array([_tfds_id(m) for m in np.atleast_1d(batch["movie_id"])]))
        values.append(np.atleast_1d(batch["user_rating"]).astype(np.float32))
        stamps.append(np.atleast_1d(batch["timestamp"]).astype(np.int64))
    if not users:
        raise DataError(f"TFDS {variant}: no ratings")
    users_a, items_a = np.concatenate(users), np.concatenate(items)
    # TFDS ids are strings; real ones are digits, so sort them as numbers like the files do.
    untitled_a = np.array(untitled, dtype=str)
    if all(k.isdigit() for k in movies) and all(s.isdigit() for s in np.unique(items_a)):
        items_a = items_a.astype(np.int64)
        untitled_a = untitled_a.astype(np.int64)
    if all(s.isdigit() for s in np.unique(users_a)):
        users_a = users_a.astype(np.int64)
    prep = prepare(catalogue, users_a, items_a, np.concatenate(values), np.concatenate(stamps),
                   cfg, skipped, untitled_a)
    info = {"source": "tfds", "variant": variant, "ratings_read": int(len(users_a)),
            "tags_used": False, "items_with_tags": 0, "tags": None,
            "skipped": _skipped_dict(skipped)}
    return build_split_data(catalogue, prep, cfg, info)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_id(value) -> str:
    # Canonical ids contain no whitespace (CSV histories are space-separated).
    return "_".join(_text(value).split())


def from_tfds(name: str, cfg: MovieLensConfig, data_dir: str | None = None,
              download: bool = False, batch_size: int = 65536) -> SplitData:
    """Loads ``movielens/<version>-ratings`` + ``-movies`` through tensorflow_datasets.

    ``name`` is a TFDS version ("100k", "1m", "latest-small", "25m", "20m"), a GroupLens
    variant ("ml-100k") or a full builder name ("movielens/100k-ratings").
    ``download=False`` by default: no hidden downloads; prepare the dataset first (or pass
    ``download=True``).
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    version = name.split("/")[-1]
    version = TFDS_VERSIONS.get(version, version)
    for suffix in ("-ratings", "-movies"):
        version = version[:-len(suffix)] if version.endswith(suffix) else version
    if version not in TFDS_VERSIONS.values():
        raise DataError(f"unknown TFDS MovieLens version {name!r}; use one of "
                        f"{sorted(TFDS_VERSIONS.values())}")
    try:
        ratings, ratings_info = tfds.load(f"movielens/{version}-ratings", split="train",
                                          data_dir=data_dir, download=download,
                                          with_info=True)
        movies = tfds.load(f"movielens/{version}-movies", split="train", data_dir=data_dir,
                           download=download)
    except (AssertionError, FileNotFoundError, tfds.core.registered.DatasetNotFoundError
            ) as err:
        raise DataError(f"TFDS movielens/{version}: {err}; prepare it first (tfds build "
                        f"movielens/{version}-ratings) or pass download=True") from None
    genre_names = ratings_info.features["movie_genres"].feature.names
    columns = ("user_id", "movie_id", "user_rating", "timestamp")
    ratings = ratings.map(lambda x: {k: x[k] for k in columns}).batch(batch_size)
    return tfds_to_canonical(tfds.as_numpy(ratings), tfds.as_numpy(movies), genre_names, cfg,
                             variant=f"tfds:movielens/{version}")
