"""Sequential-recommendation benchmark files: the RecBole atomic files that UniSRec (KDD
2022) and the text-aware recommenders after it release for the Amazon benchmarks
(Scientific, Office, Instruments, Arts, Pantry, Online Retail, ...). One loader for all of
them (``data.source: sequences``; see docs/data.md, "Sequential benchmarks").

Files in ``data.data_dir``, all sharing a prefix ``<name>`` (``data.sequences.name``, or
the only ``*.train.inter`` there), tab-separated, UTF-8:

==================  ===========================================  ==================
file                columns                                      header
==================  ===========================================  ==================
``.train.inter``    ``user_id:token`` ``item_id_list:token_seq``  yes (names before
``.valid.inter``    (space-separated history, oldest first)       ``:`` are read;
``.test.inter``     ``item_id:token`` (the target)                order is free)
``.item2index``     original item id, 0-based index               no
``.text``           ``item_id:token`` (original id)               yes
                    ``text:token_seq``
``.user2index``     original user id, 0-based index (optional)    no
==================  ===========================================  ==================

Ids in the ``.inter`` files are the 0-based indices; ``.item2index`` maps them to the
original ids, which the catalogue uses (``.text`` is keyed by them). Each row is one
impression whose positive is the target and whose history is ``item_id_list`` as given
(the files already cap it, at 50 for UniSRec's). Rows are used as they are: the files
define the split (leave-one-out: each user's last item is the test target, the one before
the validation target, every earlier prefix a training row).

Candidates: a training impression adds ``negatives_per_positive`` sampled negatives (for
the pointwise losses; the in-batch softmax reads the positives alone), a validation/test
impression ``eval_negatives`` uniform ones (the sampled metrics); negatives are never an
item of the user's rows. The published full-ranking protocol ranks each target against
every item and masks none of the user's history (RecBole's full-sort evaluation for
sequential models masks only its padding id); ``benchmarks.quality`` does the same.

Cold start (``data.sequences.cold_start_items``, a share such as 0.1): a seeded set of
items is held out of training entirely (rows with such a target go, the items leave the
other rows' histories, and no training negative is one of them); validation and test rows
are kept as they are, so the test users whose target is held out measure ranking an item
no training row ever showed. ``info["cold_start"]`` lists the items and what was dropped.
"""

from __future__ import annotations

import collections
import os
from typing import Iterator

import numpy as np
import tensorflow as tf

from trainer.config import SequencesConfig
from trainer.data import sampling
from trainer.data.canonical import Catalogue, DataError, Item, SplitData, decoded_lines

SPLIT_FILES = {"train": "train.inter", "validation": "valid.inter", "test": "test.inter"}
INTER_COLUMNS = ("user_id", "item_id_list", "item_id")
TEXT_COLUMNS = ("item_id", "text")
_FORMAT_HINT = ("data.source=sequences reads <name>.train.inter, .valid.inter, .test.inter, "
                ".item2index and .text (RecBole atomic files; see docs/data.md)")


def find_name(data_dir: str, name: str = "") -> str:
    """The files' common prefix: ``name`` if given, else the only ``<name>.train.inter`` in
    ``data_dir``."""
    if name:
        return name
    if not tf.io.gfile.isdir(data_dir):
        raise DataError(f"{data_dir}: directory not found; set data.data_dir to the folder "
                        f"holding the benchmark files ({_FORMAT_HINT})")
    suffix = "." + SPLIT_FILES["train"]
    names = sorted(f[:-len(suffix)] for f in tf.io.gfile.listdir(data_dir)
                   if f.endswith(suffix))
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise DataError(f"{data_dir}: expected exactly one *{suffix} file, found {found}; "
                        "set data.sequences.name to the prefix to read")
    return names[0]


def _rows(path: str, what: str) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of a tab-separated file, blank lines skipped."""
    for line_no, text in decoded_lines(path, missing_hint=f"{what}; {_FORMAT_HINT}"):
        text = text.rstrip("\r\n")
        if text.strip():
            yield line_no, text.split("\t")


def _header(path: str, rows, wanted: tuple) -> tuple[dict, Iterator]:
    """Column positions of ``wanted`` from the header row (``name:type`` cells)."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: file is empty; it needs a header row "
                        f"({', '.join(wanted)}) and at least one row")
    line_no, cells = first
    names = [cell.split(":", 1)[0].strip() for cell in cells]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise DataError(f"{path}:{line_no}: header {cells} lacks column(s) {missing}; "
                        f"expected {', '.join(wanted)} (tab-separated, e.g. "
                        "'user_id:token')")
    return {name: names.index(name) for name in wanted}, rows


def _index(value: str, path: str, line: int, what: str, limit: int | None) -> int:
    """``value`` as an integer index in ``[0, limit)`` (any integer when ``limit`` is None:
    users without a ``.user2index`` file are only labels)."""
    try:
        index = int(value)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} {value!r} is not an integer index") from None
    if limit is not None and not 0 <= index < limit:
        raise DataError(f"{path}:{line}: {what} {index} is out of range: the index files "
                        f"define {limit} (0 to {limit - 1})")
    return index


def read_index(path: str, what: str) -> list[str]:
    """The original ids of a ``.item2index`` / ``.user2index`` file, by index (which must
    run 0..n-1, each once)."""
    by_index: dict = {}
    seen: dict = {}
    for line_no, cells in _rows(path, what):
        if len(cells) != 2:
            raise DataError(f"{path}:{line_no}: expected 2 tab-separated fields (original "
                            f"id, index), found {len(cells)}")
        original, value = cells[0].strip(), cells[1].strip()
        try:
            index = int(value)
        except ValueError:
            raise DataError(f"{path}:{line_no}: index {value!r} is not an integer") from None
        if original in seen:
            raise DataError(f"{path}:{line_no}: id {original!r} is listed twice (first at "
                            f"line {seen[original]})")
        if index in by_index:
            raise DataError(f"{path}:{line_no}: index {index} is given twice")
        seen[original] = line_no
        by_index[index] = original
    if not by_index:
        raise DataError(f"{path}: file is empty; it needs one 'id<TAB>index' row per id")
    if sorted(by_index) != list(range(len(by_index))):
        gap = next(i for i in range(len(by_index)) if i not in by_index)
        raise DataError(f"{path}: indices must run from 0 to {len(by_index) - 1}; "
                        f"{gap} is missing")
    return [by_index[i] for i in range(len(by_index))]


def read_texts(path: str, item_ids: list[str]) -> tuple[dict, int]:
    """``{original item id: text}`` for the indexed items, and the number of ``.text`` rows
    naming items the index does not hold (ignored)."""
    known = set(item_ids)
    columns, rows = _header(path, _rows(path, "the item texts"), TEXT_COLUMNS)
    texts: dict = {}
    unknown = 0
    for line_no, cells in rows:
        if len(cells) <= max(columns.values()):
            raise DataError(f"{path}:{line_no}: expected {max(columns.values()) + 1} "
                            f"tab-separated fields, found {len(cells)}")
        item = cells[columns["item_id"]].strip()
        if item not in known:
            unknown += 1
            continue
        if item in texts:
            raise DataError(f"{path}:{line_no}: item {item!r} has a second text row")
        texts[item] = " ".join(cells[columns["text"]].split())
    return texts, unknown


def read_inter(path: str, n_items: int, n_users: int | None) -> list[tuple[int, tuple, int]]:
    """``(user index, history indices, target index)`` of every row of an ``.inter`` file,
    in file order."""
    columns, rows = _header(path, _rows(path, "a split file"), INTER_COLUMNS)
    out = []
    width = max(columns.values()) + 1
    for line_no, cells in rows:
        if len(cells) < width:
            raise DataError(f"{path}:{line_no}: expected {width} tab-separated fields, "
                            f"found {len(cells)}")
        user = _index(cells[columns["user_id"]].strip(), path, line_no, "user_id", n_users)
        history = tuple(_index(v, path, line_no, "item_id_list entry", n_items)
                        for v in cells[columns["item_id_list"]].split())
        target = _index(cells[columns["item_id"]].strip(), path, line_no, "item_id", n_items)
        out.append((user, history, target))
    if not out:
        raise DataError(f"{path}: no rows after the header")
    return out


def _check_cfg(cfg: SequencesConfig) -> None:
    if cfg.negatives_per_positive < 0 or cfg.eval_negatives < 0:
        raise DataError("data.sequences.negatives_per_positive and eval_negatives must be "
                        ">= 0")
    if not 0.0 <= cfg.cold_start_items < 1.0:
        raise DataError(f"data.sequences.cold_start_items must be in [0, 1), got "
                        f"{cfg.cold_start_items}")


def cold_start_items(num_items: int, cfg: SequencesConfig) -> set:
    """The item indices held out of training: a seeded ``cfg.cold_start_items`` share of
    the catalogue (its own random stream, so other seeded draws do not move)."""
    count = int(round(cfg.cold_start_items * num_items))
    if count == 0:
        return set()
    rng = np.random.default_rng([cfg.seed, sampling.PURPOSE_COLD_START])
    return set(rng.choice(num_items, size=count, replace=False).tolist())


def _hold_out(train_rows: list, cold: set) -> tuple[list, dict]:
    """Training rows without the cold items: rows whose target is cold go, and cold items
    leave the histories of the others (the model never sees them train)."""
    kept, stripped = [], 0
    for user, history, target in train_rows:
        if target in cold:
            continue
        clean = tuple(i for i in history if i not in cold)
        stripped += len(history) - len(clean)
        kept.append((user, clean, target))
    return kept, {"train_rows_dropped": len(train_rows) - len(kept),
                  "history_entries_dropped": stripped}


def load(data_dir: str, cfg: SequencesConfig) -> SplitData:
    """Reads a directory of sequential-benchmark files into canonical impressions.

    Example::

        data = load("PATH/amazon-scientific", SequencesConfig())
        data.info["rows"]  # {"train": 34101, "validation": 8442, "test": 8442}
    """
    _check_cfg(cfg)
    name = find_name(data_dir, cfg.name)
    prefix = os.path.join(data_dir, name)
    item_ids = read_index(f"{prefix}.item2index", "the item index")
    user_path = f"{prefix}.user2index"
    user_ids = read_index(user_path, "the user index") if tf.io.gfile.exists(user_path) \
        else None
    texts, unknown_texts = read_texts(f"{prefix}.text", item_ids)
    rows = {split: read_inter(f"{prefix}.{suffix}", len(item_ids),
                              None if user_ids is None else len(user_ids))
            for split, suffix in SPLIT_FILES.items()}

    catalogue = Catalogue()
    for item in item_ids:
        catalogue[item] = Item(item_id=item, fields={"title": texts.get(item, "")})
    cold = cold_start_items(len(item_ids), cfg)
    rows["train"], held_out = _hold_out(rows["train"], cold)
    user_items: dict = collections.defaultdict(set)
    for split_rows in rows.values():
        for user, history, target in split_rows:
            user_items[user].update(history)
            user_items[user].add(target)

    def user_name(user: int) -> str:
        return user_ids[user] if user_ids is not None else str(user)

    splits: dict = {split: [] for split in SPLIT_FILES}
    shorts = collections.Counter()
    for split, split_rows in rows.items():
        per_user = collections.Counter()
        wanted = cfg.negatives_per_positive if split == "train" else cfg.eval_negatives
        purpose = sampling.PURPOSE_TRAIN if split == "train" else sampling.PURPOSE_EVAL
        for user, history, target in split_rows:
            user_id = user_name(user)
            k = per_user[user]
            per_user[user] += 1
            impression_id = f"{user_id}-{split}" + (f"-{k}" if split == "train" or k else "")
            # Validation and test rows of a user draw from different generators.
            index = k if split == "train" else 2 * k + (split == "test")
            rng = sampling.user_rng(cfg.seed, purpose, user_id, index)
            # A training negative is never a cold item either: training never sees them.
            excluded = user_items[user] | cold if split == "train" and cold else \
                user_items[user]
            negatives = sampling.sample_negatives(rng, wanted, excluded, len(item_ids))
            shorts[split] += len(negatives) < wanted
            splits[split] += sampling.impression(
                rng, user_id, impression_id, tuple(item_ids[i] for i in history), target,
                negatives, 0, split, item_ids)
    info = {
        "source": "sequences", "name": name, "data_dir": data_dir,
        "items": len(item_ids),
        "items_without_text": sum(1 for item in item_ids if not texts.get(item)),
        "text_rows_of_unknown_items": unknown_texts,
        "users": len(user_items),
        "rows": {split: len(split_rows) for split, split_rows in rows.items()},
        "examples": {split: len(examples) for split, examples in splits.items()},
        "impressions_short_of_negatives": {split: shorts[split] for split in SPLIT_FILES},
        "settings": {"negatives_per_positive": cfg.negatives_per_positive,
                     "eval_negatives": cfg.eval_negatives, "seed": cfg.seed,
                     "full_ranking_masks_history": False,
                     "cold_start_items": cfg.cold_start_items},
    }
    if cold:
        info["cold_start"] = {"items": sorted(item_ids[i] for i in cold), **held_out,
                              "test_targets": sum(t in cold for _, _, t in rows["test"])}
    return SplitData(catalogue=catalogue, splits=splits, info=info)
