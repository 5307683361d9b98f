"""Tests for trainer/data/movielens.py on tiny fixture files built in tmp_path."""

from __future__ import annotations

import collections
import csv
import hashlib
import os
import random
import zipfile

import pytest

from trainer.config import MovieLensConfig
from trainer.data import movielens as ml
from trainer.data.canonical import DataError

REAL_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data",
                        "ml-latest-small")
GENRES = ("Action", "Comedy", "Drama", "Children's", "Sci-Fi")


def make_ratings(n_users=8, n_items=40, per_user=12, seed=0):
    """(user, item, rating, ts) rows: every user has >= 5 positives, some low ratings and
    timestamp ties (pairs share a timestamp), plus user 99 with only 2 positives."""
    rng = random.Random(seed)
    rows = []
    for user in range(1, n_users + 1):
        items = rng.sample(range(1, n_items + 1), per_user)
        for k, item in enumerate(items):
            rating = 5 if k < 5 else rng.choice([1, 2, 3, 4, 5])
            rows.append((user, item, float(rating), 10_000 + user * 100 + (per_user - k) // 2))
    rows += [(99, 1, 5.0, 50), (99, 2, 4.0, 60), (99, 3, 2.0, 70)]
    rng.shuffle(rows)  # the loader must sort, not trust the file order
    return rows


def make_movies(n_items=40):
    return {i: (f"Movie {i} ({1980 + i % 30})", [GENRES[i % 5], GENRES[(i + 2) % 5]])
            for i in range(1, n_items + 1)}


def write_csv_variant(path, rows, movies, tags=()):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "ratings.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for u, i, r, t in rows:
            w.writerow([u, i, f"{r:.1f}", t])
    with open(os.path.join(path, "movies.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(["movieId", "title", "genres"])
        for i, (title, genres) in movies.items():
            w.writerow([i, title, "|".join(genres) if genres else "(no genres listed)"])
    with open(os.path.join(path, "tags.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(["userId", "movieId", "tag", "timestamp"])
        for u, i, tag, *ts in tags:  # (user, movie, tag[, timestamp]); timestamp 1 if absent
            w.writerow([u, i, tag, ts[0] if ts else 1])
    return str(path)


def write_100k(path, rows, movies):
    os.makedirs(path, exist_ok=True)
    genres = list(ml.ML100K_GENRES)
    with open(os.path.join(path, "u.data"), "w", encoding="latin-1") as f:
        for u, i, r, t in rows:
            f.write(f"{u}\t{i}\t{int(r)}\t{t}\n")
    with open(os.path.join(path, "u.genre"), "w", encoding="latin-1") as f:
        f.writelines(f"{g}|{k}\n" for k, g in enumerate(genres))
        f.write("\n")
    with open(os.path.join(path, "u.item"), "w", encoding="latin-1") as f:
        for i, (title, gs) in movies.items():
            flags = "|".join("1" if g in gs else "0" for g in genres)
            f.write(f"{i}|{title}|01-Jan-1995||http://us.imdb.com/x|{flags}\n")
    return str(path)


def write_1m(path, rows, movies):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "ratings.dat"), "w", encoding="latin-1") as f:
        for u, i, r, t in rows:
            f.write(f"{u}::{i}::{int(r)}::{t}\n")
    with open(os.path.join(path, "movies.dat"), "w", encoding="latin-1") as f:
        for i, (title, gs) in movies.items():
            f.write(f"{i}::{title}::{'|'.join(gs)}\n")
    return str(path)


def cfg(**kw):
    base = dict(eval_negatives=10, negatives_per_positive=3, min_positives=3)
    base.update(kw)
    return MovieLensConfig(**base)


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory):
    return write_csv_variant(tmp_path_factory.mktemp("ml") / "ml-latest-small",
                             make_ratings(), make_movies())


@pytest.fixture(scope="module")
def csv_data(csv_dir):
    return ml.load(csv_dir, cfg())


def expected_positives(rows, threshold=4.0):
    """user -> positive items sorted by (timestamp, item id): the reference split."""
    by_user = collections.defaultdict(list)
    for u, i, r, t in rows:
        if r >= threshold:
            by_user[str(u)].append((t, i))
    return {u: [str(i) for _, i in sorted(v)] for u, v in by_user.items()}


def impressions(examples):
    out = collections.defaultdict(list)
    for e in examples:
        out[e.impression_id].append(e)
    return out


# ----------------------------------------------------------------------------- item text

@pytest.mark.parametrize("raw, title, year", [
    ("Toy Story (1995)", "Toy Story", "1995"),
    ("Sabrina (1954)", "Sabrina", "1954"),
    ("Sabrina (1995)  ", "Sabrina", "1995"),
    ("Babylon 5 ", "Babylon 5", ""),
    ("  Black Mirror", "Black Mirror", ""),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
     "City of Lost Children, The (Cité des enfants perdus, La)", "1995"),
    ("(500) Days of Summer (2009)", "(500) Days of Summer", "2009"),
    ("1984 (1984)", "1984", "1984"),
    ("Death Note: Desu nôto (2006–2007)", "Death Note: Desu nôto", "2006–2007"),
])
def test_split_title(raw, title, year):
    assert ml.split_title(raw) == (title, year)


def test_join_genres_and_top_tags():
    assert ml.join_genres(["Action", "Sci-Fi"]) == "Action, Sci-Fi"
    assert ml.join_genres(["(no genres listed)"]) == ""
    assert ml.top_tags(["funny", "dark", "Funny", "b", "a", "dark", "funny"], 3) == \
        "funny, dark, a"


# ----------------------------------------------------------------------------- formats

def test_ml100k_latin1_titles_genres_and_untitled(tmp_path):
    movies = make_movies()
    movies[7] = ("Café Society (1995)", ["Comedy", "Drama"])
    movies[8] = ("unknown", ["unknown"])  # ml-100k's placeholder movie 267
    rows = make_ratings()
    data = ml.load(write_100k(tmp_path / "ml-100k", rows, movies), cfg())
    assert data.info["variant"] == "ml-100k"
    item = data.catalogue["7"]
    assert item.fields == {"title": "Café Society", "year": "1995",
                           "categories": "Comedy, Drama", "tags": ""}
    assert item.provider == ""
    assert "8" not in data.catalogue
    assert data.info["skipped"]["items_without_title"] == 1
    assert data.info["skipped"]["ratings_item_without_title"] == sum(r[1] == 8 for r in rows)
    assert data.info["items"] == 39


def test_ml1m_latin1_and_genres(tmp_path):
    movies = make_movies()
    movies[3] = ("Misérables, Les (1995)", ["Children's", "Drama"])
    data = ml.load(write_1m(tmp_path / "ml-1m", make_ratings(), movies), cfg())
    assert data.info["variant"] == "ml-1m"
    assert data.catalogue["3"].fields["title"] == "Misérables, Les"
    assert data.catalogue["3"].fields["categories"] == "Children's, Drama"


def test_csv_variant_tags_quotes_and_no_genres(tmp_path):
    movies = make_movies()
    movies[2] = ("American President, The (1995)", [])
    tags = [(1, 2, "politics"), (2, 2, "Politics"), (3, 2, "funny, warm"), (1, 2, "romance"),
            (4, 2, "funny, warm"), (5, 2, "politics"), (1, 999, "ghost")]
    path = write_csv_variant(tmp_path / "ml-latest-small", make_ratings(), movies, tags)
    data = ml.load(path, cfg(max_tags=2))
    assert data.info["variant"] == "ml-latest-small"
    assert data.catalogue["2"].fields == {"title": "American President, The", "year": "1995",
                                          "categories": "", "tags": "politics, funny, warm"}
    assert data.info["skipped"]["tags_unknown_item"] == 1
    assert data.info["items_with_tags"] == 1
    no_tags = ml.load(path, cfg(use_tags=False))
    assert no_tags.catalogue["2"].fields["tags"] == ""


def tag_fixture(path):
    """Users 1 and 2 rate movies 1-5 and 6-10 positively at times 100..500 (train: the first
    three, last training positive at 300; validation the 4th, test the 5th); user 3 has two
    positives (dropped by min_positives=3, kept with validation + test but no training
    positive at min_positives=2); user 4 only tags."""
    rows = [(1, i, 5.0, 100 * i) for i in range(1, 6)]
    rows += [(2, 5 + i, 5.0, 100 * i) for i in range(1, 6)]
    rows += [(1, 20, 2.0, 350), (3, 11, 5.0, 100), (3, 12, 5.0, 200)]
    tags = [(1, 6, "early", 250),             # user 1's training period: kept
            (1, 7, "at cutoff", 300),         # at the last training positive: kept
            (1, 6, "late", 301),              # after it (a low rating at 350 changes nothing)
            (1, 5, "own test", 50),           # user 1's own test movie, even written early
            (1, 4, "own validation", 450),    # user 1's own validation movie
            (2, 5, "before test", 150),       # user 2's training period, user 1's test movie
            (2, 5, "after test", 600),        # user 2 after their last training positive
            (3, 6, "unevaluated", 10**9),     # user 3: no held-out interaction (min_pos 3)
            (4, 7, "only tags", 10**9)]       # user 4: no ratings at all
    return write_csv_variant(path, rows, make_movies(), tags)


def tag_texts(data):
    return {m: set(data.catalogue[m].fields["tags"].split(", ")) - {""}
            for m in ("4", "5", "6", "7")}


def test_tags_until_train_keeps_only_training_time_tags(tmp_path):
    path = tag_fixture(tmp_path / "ml-latest-small")
    train, every = ml.load(path, cfg()), ml.load(path, cfg(tags_until="all"))
    assert MovieLensConfig().tags_until == "train"
    assert tag_texts(train) == {"4": set(), "5": {"before test"},
                                "6": {"early", "unevaluated"},
                                "7": {"at cutoff", "only tags"}}
    assert tag_texts(every) == {"4": {"own validation"},
                                "5": {"own test", "before test", "after test"},
                                "6": {"early", "late", "unevaluated"},
                                "7": {"at cutoff", "only tags"}}
    outside = {"own_held_out_item": 2, "after_last_training_positive": 2,
               "no_training_positive": 0}
    assert train.info["tags"] == {"until": "train", "applications": 9, "kept": 5,
                                  "dropped": 4, "outside_training_time": outside,
                                  "from_users_without_held_out": 2}
    assert every.info["tags"] == {"until": "all", "applications": 9, "kept": 9,
                                  "dropped": 0, "outside_training_time": outside,
                                  "from_users_without_held_out": 2}
    assert train.info["items_with_tags"] == 3 and every.info["items_with_tags"] == 4
    assert train.info["settings"]["tags_until"] == "train"
    assert train.splits == every.splits  # the rule changes item text, never the split
    # User 3 kept with only held-out positives: no training period, so no tags of theirs.
    two = ml.load(path, cfg(min_positives=2))
    assert tag_texts(two)["6"] == {"early"}
    assert two.info["tags"]["outside_training_time"]["no_training_positive"] == 1
    assert two.info["tags"]["from_users_without_held_out"] == 1
    _, _, stream_info = ml.stream(path, cfg())
    assert stream_info["tags"] == train.info["tags"]


def test_tags_until_and_tag_rows_are_checked(tmp_path):
    with pytest.raises(DataError, match=r"tags_until must be one of.*'later'"):
        ml.load(str(tmp_path / "not read"), cfg(tags_until="later"))
    path = tag_fixture(tmp_path / "d")
    with open(os.path.join(path, "tags.csv"), "a", encoding="utf-8") as f:
        f.write("1,6,fine,yesterday\r\n")
    with pytest.raises(DataError, match=r"tags\.csv:11: .*timestamp 'yesterday'"):
        ml.load(path, cfg())


def test_same_split_from_every_format(tmp_path, csv_data):
    rows, movies = make_ratings(), make_movies()
    for data in (ml.load(write_100k(tmp_path / "a", rows, movies), cfg()),
                 ml.load(write_1m(tmp_path / "b", rows, movies), cfg())):
        for split in ("train", "validation", "test"):
            assert data.splits[split] == csv_data.splits[split]


def test_stream_yields_what_load_collects(csv_dir, csv_data):
    catalogue, examples, info = ml.stream(csv_dir, cfg())
    assert list(catalogue) == list(csv_data.catalogue)
    streamed = list(examples())
    for split in ("train", "validation", "test"):
        assert [e for e in streamed if e.split == split] == csv_data.splits[split]
    # The pass's short-sample counts reach info, as load() records them.
    assert info["eval_impressions_short_of_negatives"] == \
        csv_data.info["eval_impressions_short_of_negatives"]


def test_auto_finds_files_one_level_down(tmp_path):
    write_1m(tmp_path / "ml-1m", make_ratings(), make_movies())
    data = ml.load(str(tmp_path), cfg())
    assert data.info["variant"] == "ml-1m"
    assert data.info["data_dir"] == str(tmp_path / "ml-1m")


# ----------------------------------------------------------------------------- splitting

def test_leave_last_out_and_history(csv_data):
    expected = expected_positives(make_ratings())
    kept = {u: p for u, p in expected.items() if len(p) >= 3}
    assert csv_data.info["users"] == {"total": 9, "kept": len(kept), "dropped_min_positives": 1}
    assert "99" not in {e.user_id for s in csv_data.splits.values() for e in s}
    test = {e.user_id: e for e in csv_data.splits["test"] if e.label == 1}
    val = {e.user_id: e for e in csv_data.splits["validation"] if e.label == 1}
    assert set(test) == set(val) == set(kept)
    for user, positives in kept.items():
        assert test[user].candidate == positives[-1]
        assert test[user].history == tuple(positives[:-1])  # strictly earlier, latest last
        assert val[user].candidate == positives[-2]
        assert val[user].history == tuple(positives[:-2])
        train = sorted((e for e in csv_data.splits["train"] if e.user_id == user and e.label),
                       key=lambda e: int(e.impression_id.rsplit("-", 1)[1]))
        assert [e.candidate for e in train] == positives[:-2]
        for k, e in enumerate(train):
            assert e.impression_id == f"{user}-train-{k}"
            assert e.history == tuple(positives[:k])
    for split, rows in csv_data.splits.items():
        for e in rows:
            assert e.split == split and e.extras == {} and e.query == ""
            assert e.candidate in csv_data.catalogue
            assert all(h in csv_data.catalogue for h in e.history)
    assert csv_data.info["positives"]["kept_users"] == sum(len(p) for p in kept.values())


def test_ties_broken_by_item_id(tmp_path):
    rows = [(1, 30, 5.0, 100), (1, 4, 5.0, 100), (1, 12, 5.0, 100), (1, 2, 5.0, 50)]
    data = ml.load(write_csv_variant(tmp_path / "d", rows, make_movies()), cfg())
    pos = {e.split: e for s in data.splits.values() for e in s if e.label == 1}
    assert pos["test"].candidate == "30" and pos["test"].history == ("2", "4", "12")
    assert pos["validation"].candidate == "12"
    assert [e.candidate for e in data.splits["train"] if e.label] == ["2", "4"]


def test_history_capped_at_50(tmp_path):
    rows = [(1, i, 5.0, i) for i in range(1, 61)]
    data = ml.load(write_csv_variant(tmp_path / "d", rows, make_movies(80)), cfg())
    test_pos = [e for e in data.splits["test"] if e.label][0]
    assert test_pos.history == tuple(str(i) for i in range(10, 60))


def test_impression_shapes_and_timestamps(csv_data):
    for split, size in (("train", 4), ("validation", 11), ("test", 11)):
        for imp_id, rows in impressions(csv_data.splits[split]).items():
            assert len(rows) == size, imp_id
            assert sum(e.label for e in rows) == 1
            assert len({e.candidate for e in rows}) == size
            assert len({(e.user_id, e.history, e.timestamp) for e in rows}) == 1
    info = csv_data.info
    assert info["examples"] == {s: len(v) for s, v in csv_data.splits.items()}
    assert info["impressions"]["test"] == info["users"]["kept"]


def test_negatives_never_rated_even_low_rated(csv_data):
    rated = collections.defaultdict(set)
    for u, i, _, _ in make_ratings():
        rated[str(u)].add(str(i))
    low = sum(1 for r in make_ratings() if r[2] < 4)
    assert low > 10  # the fixture has low ratings that must not become negatives
    for rows in csv_data.splits.values():
        for e in rows:
            if e.label == 0:
                assert e.candidate not in rated[e.user_id]


def test_eval_99_negatives(tmp_path):
    path = write_csv_variant(tmp_path / "d", make_ratings(n_items=150), make_movies(150))
    data = ml.load(path, MovieLensConfig())
    assert data.info["settings"]["eval_negatives"] == 99
    for split in ("validation", "test"):
        imps = impressions(data.splits[split])
        assert len(imps) == data.info["users"]["kept"]
        for rows in imps.values():
            assert len(rows) == 100 and sum(e.label for e in rows) == 1
            assert len({e.candidate for e in rows}) == 100
    assert data.info["eval_impressions_short_of_negatives"] == 0


def test_short_of_negatives_is_reported(tmp_path):
    rows = [(1, i, 5.0, i) for i in range(1, 9)]
    data = ml.load(write_csv_variant(tmp_path / "d", rows, make_movies(12)), cfg())
    assert all(len(r) == 5 for r in impressions(data.splits["test"]).values())  # 4 unrated
    assert data.info["eval_impressions_short_of_negatives"] == 2


def test_positive_not_always_first(csv_data):
    positions = {[e.label for e in rows].index(1)
                 for rows in impressions(csv_data.splits["test"]).values()}
    assert len(positions) > 1


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_examples_other_seed_other_negatives(csv_dir, csv_data):
    again = ml.load(csv_dir, cfg())
    assert again.splits == csv_data.splits
    other = ml.load(csv_dir, cfg(seed=99))

    def negatives(data, split):
        return [(e.impression_id, e.candidate) for e in data.splits[split] if not e.label]

    for split in ("train", "test"):
        assert set(negatives(other, split)) != set(negatives(csv_data, split))
        # Positives and the split itself do not depend on the seed.
        assert [(e.impression_id, e.candidate) for e in other.splits[split] if e.label] == \
            [(e.impression_id, e.candidate) for e in csv_data.splits[split] if e.label]


def test_eval_negatives_independent_of_training_settings(csv_dir, csv_data):
    other = ml.load(csv_dir, cfg(negatives_per_positive=1, negative_sampling="popularity",
                                 max_train_examples=10))
    for split in ("validation", "test"):
        assert other.splits[split] == csv_data.splits[split]


def test_popularity_sampling_uses_rated_items_only(tmp_path):
    movies = make_movies(60)  # items 41..60 have no ratings at all
    path = write_csv_variant(tmp_path / "d", make_ratings(), movies)
    data = ml.load(path, cfg(negative_sampling="popularity", negatives_per_positive=6))
    rated_anywhere = {str(r[1]) for r in make_ratings()}
    train_negs = [e.candidate for e in data.splits["train"] if not e.label]
    assert train_negs and set(train_negs) <= rated_anywhere
    uniform = ml.load(path, cfg(negatives_per_positive=6))
    assert {e.candidate for e in uniform.splits["train"] if not e.label} - rated_anywhere


def test_max_train_examples_keeps_whole_impressions(csv_dir, csv_data):
    data = ml.load(csv_dir, cfg(max_train_examples=21))  # 21 // (1 + 3) = 5 impressions
    subset = data.info["train_subset"]
    assert subset == {"max_train_examples": 21, "impressions_total":
                      csv_data.info["impressions"]["train"], "impressions_kept": 5}
    imps = impressions(data.splits["train"])
    assert len(imps) == 5 and all(len(r) == 4 for r in imps.values())
    full = impressions(csv_data.splits["train"])
    for imp_id, rows in imps.items():
        assert [(e.candidate, e.label) for e in rows] == \
            [(e.candidate, e.label) for e in full[imp_id]]
    assert data.splits["train"] == ml.load(csv_dir, cfg(max_train_examples=21)).splits["train"]


def test_min_positives_drop_counting(csv_dir):
    data = ml.load(csv_dir, cfg(min_positives=6))
    expected = expected_positives(make_ratings())
    dropped = sum(1 for p in expected.values() if len(p) < 6)
    assert data.info["users"]["dropped_min_positives"] == dropped
    assert data.info["users"]["kept"] == len(expected) - dropped


def test_unknown_movies_and_duplicates_counted(tmp_path):
    rows = make_ratings() + [(1, 777, 5.0, 1), (2, 778, 1.0, 1)]
    first = rows[0]
    rows.append((first[0], first[1], 5.0, first[3] + 10**6))  # re-rating: latest wins
    data = ml.load(write_csv_variant(tmp_path / "d", rows, make_movies()), cfg())
    skipped = data.info["skipped"]
    assert skipped["ratings_unknown_item"] == 2
    assert skipped["duplicate_ratings"] == 1
    assert data.info["ratings_used"] == data.info["ratings_read"] - 3


# ----------------------------------------------------------------------------- bad input

def test_missing_file_names_directory_and_expected_files(tmp_path):
    path = write_csv_variant(tmp_path / "d", make_ratings(), make_movies())
    os.remove(os.path.join(path, "movies.csv"))
    with pytest.raises(DataError, match=r"no MovieLens layout.*ratings\.csv \+ movies\.csv"):
        ml.load(path, cfg())
    with pytest.raises(DataError, match=r"not a ml-1m directory.*ratings\.dat"):
        ml.load(path, cfg(variant="ml-1m"))
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        ml.load(str(tmp_path / "nowhere"), cfg())


def test_wrong_header(tmp_path):
    path = write_csv_variant(tmp_path / "d", make_ratings(), make_movies())
    with open(os.path.join(path, "ratings.csv"), "w") as f:
        f.write("user,item,score,time\n1,1,5,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv:1: header"):
        ml.load(path, cfg())


def test_corrupt_rows_name_file_and_line(tmp_path):
    path = write_csv_variant(tmp_path / "c", make_ratings(), make_movies())
    with open(os.path.join(path, "ratings.csv"), "a") as f:
        f.write("1,2,great,5\n")
    n = len(make_ratings()) + 2
    with pytest.raises(DataError, match=rf"ratings\.csv:{n}: rating 'great' is not a number"):
        ml.load(path, cfg())
    path = write_1m(tmp_path / "m", make_ratings(), make_movies())
    with open(os.path.join(path, "ratings.dat"), "r+") as f:
        lines = f.readlines()
        lines[2] = "1::2::5\n"
        f.seek(0)
        f.writelines(lines)
    with pytest.raises(DataError, match=r"ratings\.dat:3: 3 '::'-separated fields; expected 4"):
        ml.load(path, cfg())
    with open(os.path.join(path, "movies.dat"), "a", encoding="latin-1") as f:
        f.write("41::Extra (1999)\n")
    with pytest.raises(DataError, match=r"movies\.dat:41: 2 '::'-separated fields"):
        ml.load(path, cfg())
    path = write_100k(tmp_path / "k", make_ratings(), make_movies())
    with open(os.path.join(path, "u.data"), "a") as f:
        f.write("1\tx\t5\t100\n")
    with pytest.raises(DataError, match=rf"u\.data:{n - 1}: .*must be integers"):
        ml.load(path, cfg())


def test_bad_utf8_names_line(tmp_path):
    path = write_csv_variant(tmp_path / "d", make_ratings(), make_movies())
    with open(os.path.join(path, "movies.csv"), "ab") as f:
        f.write("41,Café (1999),Drama\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"movies\.csv:42: .*UTF-8"):
        ml.load(path, cfg())


# ----------------------------------------------------------------------------- download

def test_download_from_file_url(tmp_path):
    src = write_csv_variant(tmp_path / "src" / "ml-latest-small", make_ratings(), make_movies())
    archive = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in os.listdir(src):
            z.write(os.path.join(src, name), f"ml-latest-small/{name}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    url = archive.as_uri()
    data_dir = ml.download("ml-latest-small", str(tmp_path / "cache"), url=url,
                           file_hash=digest)
    assert sorted(os.listdir(data_dir)) == ["movies.csv", "ratings.csv", "tags.csv"]
    assert ml.load(data_dir, cfg()).splits["test"]
    with pytest.raises(DataError, match="hash"):
        ml.download("ml-latest-small", str(tmp_path / "cache2"), url=url, file_hash="0" * 64)
    with pytest.raises(DataError, match="failed"):
        ml.download("ml-latest-small", str(tmp_path / "cache3"), url=url + ".missing")
    assert set(ml.OFFICIAL_SHA256) == set(ml.VARIANTS)


# ----------------------------------------------------------------------------- TFDS

def test_from_tfds_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    rows, movies = make_ratings(), make_movies()

    def as_dataset(self, split, *args, **kwargs):
        # The builder's real feature spec encodes our records (ClassLabel genres -> ints).
        features = self.info.features
        genre_of = {"Children's": "Children"}
        if self.builder_config.table_option == "movies":
            records = [{"movie_id": str(i), "movie_title": t,
                        "movie_genres": [genre_of.get(g, g) for g in gs]}
                       for i, (t, gs) in movies.items()]
        else:
            records = [{"movie_id": str(i), "movie_title": movies[i][0],
                        "movie_genres": [genre_of.get(g, g) for g in movies[i][1]],
                        "user_id": str(u), "user_rating": r, "timestamp": t}
                       for u, i, r, t in rows]
        encoded = [features.encode_example(r) for r in records]
        return tf.data.Dataset.from_generator(
            lambda: iter(encoded), output_signature=features.get_tensor_spec())

    with tfds.testing.mock_data(as_dataset_fn=as_dataset,
                                policy=tfds.testing.MockPolicy.USE_CODE):
        data = ml.from_tfds("ml-latest-small", cfg(), batch_size=16)
    assert data.info["variant"] == "tfds:movielens/latest-small"
    assert data.catalogue["3"].fields == {"title": "Movie 3", "year": "1983",
                                          "categories": "Children, Action", "tags": ""}
    reference = ml.load(write_csv_variant_tmp(rows, movies), cfg())
    for split in ("train", "validation", "test"):
        assert data.splits[split] == reference.splits[split]
    assert data.info["users"] == reference.info["users"]


def write_csv_variant_tmp(rows, movies):
    import tempfile  # pylint: disable=import-outside-toplevel
    return write_csv_variant(os.path.join(tempfile.mkdtemp(), "ml-latest-small"), rows, movies)


def test_tfds_conversion_of_odd_ids():
    records = [{"movie_id": b"a b", "movie_title": b"Film (2001)", "movie_genres": [0]},
               {"movie_id": b"c", "movie_title": b"", "movie_genres": []}]
    ratings = [{"user_id": b"u1", "movie_id": b"a b", "user_rating": 5.0, "timestamp": 3},
               {"user_id": b"u1", "movie_id": b"c", "user_rating": 5.0, "timestamp": 4},
               {"user_id": b"u1", "movie_id": b"zz", "user_rating": 5.0, "timestamp": 5}]
    data = ml.tfds_to_canonical(ratings, records, ["Action"], cfg(min_positives=1))
    assert list(data.catalogue) == ["a_b"]
    assert data.info["skipped"]["items_without_title"] == 1
    assert data.info["skipped"]["ratings_item_without_title"] == 1
    assert data.info["skipped"]["ratings_unknown_item"] == 1
    assert [e.candidate for e in data.splits["test"]] == ["a_b"]
    with pytest.raises(DataError, match="unknown TFDS MovieLens version"):
        ml.from_tfds("movielens/7m-ratings", cfg())


# ----------------------------------------------------------------------------- real data

@pytest.mark.skipif(not os.path.exists(os.path.join(REAL_DIR, "ratings.csv")),
                    reason="../shared/data/ml-latest-small is not present")
def test_real_ml_latest_small():
    data = ml.load(REAL_DIR, MovieLensConfig(negatives_per_positive=1))
    info = data.info
    assert info["variant"] == "ml-latest-small"
    assert info["users"]["kept"] > 500
    assert info["items"] == 9742 and info["ratings_read"] == 100836
    # Tags written on the tagger's own held-out movie or after their last training
    # positive stay out of the item text (tags_until: train).
    assert info["tags"] == {"until": "train", "applications": 3683, "kept": 3441,
                            "dropped": 242, "outside_training_time": {
                                "own_held_out_item": 37, "after_last_training_positive": 205,
                                "no_training_positive": 0},
                            "from_users_without_held_out": 0}
    assert info["items_with_tags"] == 1515
    for rows in impressions(data.splits["test"]).values():
        assert sum(e.label for e in rows) == 1 and len(rows) == 100
