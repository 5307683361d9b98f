"""The canonical data format every source produces, and its CSV/JSONL readers and writers.

Two files describe a dataset (a user's own data uses exactly these; see the README):

``items.csv`` / ``items.jsonl`` -- the catalogue, one row per item:
    ``item_id`` (required, no spaces), ``title`` (required, non-empty), and optional
    ``categories``, ``description``, ``tags`` (text) and ``provider`` (a group attribute for
    fairness metrics). Other columns are kept as extra text fields.

``impressions.csv`` / ``impressions.jsonl`` -- one row per (impression, candidate):
    ``user_id``, ``impression_id`` (groups the candidates shown together), ``history``
    (item ids, most recent last; space-separated in CSV, a list in JSONL), ``candidate``
    (item id), ``label`` (1 click / 0 no click); optional ``query`` (text), ``timestamp``
    (integer), ``split`` (train / validation / test). Any other column is kept in
    ``Example.extras`` (the synthetic generator stores the truth there:
    ``true_probability``, ``true_reason_tokens``, ``true_reason_history``).

Every reader error names the file and line and says what to do; writers write to a
temporary file and rename it into place so a crash never leaves a half-written file.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
from typing import Iterable, Iterator

import tensorflow as tf

from trainer.errors import DataError
from trainer.io import atomic_write_text

SPLITS = ("train", "validation", "test")
ITEM_TEXT_FIELDS = ("title", "categories", "description", "tags")
_ITEM_COLUMNS = ("item_id", "title", "categories", "description", "tags", "provider")
_REQUIRED_ITEM_COLUMNS = ("item_id", "title")
_REQUIRED_IMPRESSION_COLUMNS = ("user_id", "impression_id", "history", "candidate", "label")
_KNOWN_IMPRESSION_COLUMNS = _REQUIRED_IMPRESSION_COLUMNS + ("query", "timestamp", "split")


@dataclasses.dataclass(frozen=True)
class Item:
    """One catalogue entry. ``fields`` holds every text field by name (title included)."""

    item_id: str
    fields: dict
    provider: str = ""

    @property
    def title(self) -> str:
        return self.fields.get("title", "")

    def text(self, field_names: Iterable[str]) -> str:
        """The item side of the BERT pair: the named non-empty fields joined with '. '."""
        parts = [str(self.fields.get(name, "")).strip() for name in field_names]
        return ". ".join(p for p in parts if p)


@dataclasses.dataclass
class Example:
    """One (user, candidate) pair shown in an impression: the unit the model scores."""

    user_id: str
    impression_id: str
    history: tuple
    candidate: str
    label: int
    query: str = ""
    timestamp: int = 0
    split: str = ""
    extras: dict = dataclasses.field(default_factory=dict)


class Catalogue(dict):
    """Maps item id -> :class:`Item`."""

    def title(self, item_id: str) -> str:
        return self[item_id].title


def _where(path: str, line: int) -> str:
    return f"{path}:{line}"


def _read_text(path: str) -> str:
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: file not found; check data.data_dir / data.items_file / "
                        "data.impressions_file")
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise DataError(f"{_where(path, line)}: text is not valid UTF-8 (byte offset "
                        f"{err.start}); re-save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty; it needs a header row and at least one row")
    return text


def decoded_lines(path: str, encoding: str = "utf-8", missing_hint: str = "",
                  fix: str = "") -> Iterator[tuple[int, str]]:
    """Streams ``(line_number, text)`` of a file, each line decoded on its own (ending kept)
    so a bad byte is reported with its line; a leading byte-order mark is dropped.

    For the source-specific loaders (MovieLens, MIND) whose files are too large to read
    whole. ``missing_hint`` is added to the file-not-found error and ``fix`` replaces the
    default advice on a decoding error.
    """
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: file not found" + (f"; {missing_hint}" if missing_hint else ""))
    # Local files through open(): iterating a GFile line by line is much slower.
    handle = tf.io.gfile.GFile(path, "rb") if "://" in path else open(path, "rb")
    with handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{_where(path, line_no)}: text is not valid {encoding.upper()} (byte "
                    f"{err.start} of the line); {fix or f're-save the file as {encoding}'}"
                ) from None
            yield line_no, (text.lstrip("\ufeff") if line_no == 1 else text)


def _file_format(path: str) -> str:
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".jsonl") or lowered.endswith(".json"):
        return "jsonl"
    raise DataError(f"{path}: unknown file type; use a .csv or .jsonl file")


# Python's csv module refuses fields over 128 KiB by default; a long description is data,
# not an error. (sys.maxsize overflows the C long on some platforms.)
csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))


_MAY_BE_EMPTY = ("history", "item_id", "title")


def _csv_error(path: str, start: int, err: csv.Error) -> DataError:
    """A csv.Error, named at the line where the record it broke on began: an unbalanced
    quote makes the reader swallow every line after it, so the line the reader stopped
    at says nothing about where the fault is."""
    message = str(err)
    if "unexpected end of data" in message or "EOF" in message:
        return DataError(f"{_where(path, start)}: malformed CSV: a quoted field that starts "
                         "on this line is never closed; close the quote, or double a quote "
                         "that is part of the text (\"\")")
    return DataError(f"{_where(path, start)}: malformed CSV: {message}")


def _read_csv_rows(path: str, text: str, required: tuple) -> list[tuple[int, dict]]:
    # strict: a stray quote is an error at its record, not text silently glued to a field
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except csv.Error as err:
        raise _csv_error(path, 1, err) from None
    header = [h.strip() for h in header]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise DataError(f"{_where(path, 1)}: duplicate column(s) {duplicated} in the header; "
                        "each column name may appear once")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{_where(path, 1)}: missing required column(s) {missing}; the "
                        f"header has {header}")
    rows = []
    while True:
        start = reader.line_num + 1  # the physical line this record begins on
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise _csv_error(path, start, err) from None
        if not record or all(not v.strip() for v in record):
            continue
        if len(record) != len(header):
            spans = (f" (the row runs over lines {start}-{reader.line_num}: a quoted field "
                     "spans line breaks)" if reader.line_num > start else "")
            raise DataError(
                f"{_where(path, start)}: malformed row: {len(record)} fields where the "
                f"header has {len(header)}{spans}; quote fields that contain commas")
        rows.append((start, dict(zip(header, record))))
    return rows


def _read_jsonl_rows(path: str, text: str, required: tuple) -> list[tuple[int, dict]]:
    rows = []
    # split("\n"), not splitlines(): that also splits at \x0b, \x1c, \u2028 ..., which
    # would shift every later line number away from what an editor shows.
    for line, raw_line in enumerate(text.split("\n"), start=1):
        if not raw_line.strip():
            continue
        try:
            record = json.loads(raw_line)
        except json.JSONDecodeError as err:
            raise DataError(f"{_where(path, line)}: malformed JSON: {err.msg}; each line "
                            "must be one JSON object") from None
        except RecursionError:
            raise DataError(f"{_where(path, line)}: malformed JSON: nested too deeply; each "
                            "line must be one flat JSON object") from None
        if not isinstance(record, dict):
            raise DataError(f"{_where(path, line)}: each line must be a JSON object, got "
                            f"{type(record).__name__}")
        missing = [c for c in required if c not in record]
        if missing:
            raise DataError(f"{_where(path, line)}: missing required field(s) {missing}")
        rows.append((line, record))
    return rows


def read_rows(path: str, required: Iterable[str]) -> list[tuple[int, dict]]:
    """Reads a CSV (header row) or JSONL file into ``(line_number, row)`` pairs; a row's
    line number is the line it starts on.

    Raises DataError for missing files, empty files, non-UTF-8 text, malformed rows,
    duplicate or missing required columns and empty required fields, naming the file and
    the line where the fault starts.
    """
    text = _read_text(path)
    required = tuple(required)
    if _file_format(path) == "csv":
        rows = _read_csv_rows(path, text, required)
    else:
        rows = _read_jsonl_rows(path, text, required)
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    for line, row in rows:
        # history may be empty (a user with none); item_id and title get their own message
        empty = [c for c in required if c not in _MAY_BE_EMPTY and (
            row[c] is None or (isinstance(row[c], str) and not row[c].strip()))]
        if empty:
            raise DataError(f"{_where(path, line)}: required field(s) {empty} are empty; "
                            "fill them in or drop the row")
        # only history may be a list (JSONL); no required field may be an object
        wrong = [c for c in required if isinstance(row[c], dict) or
                 (isinstance(row[c], list) and c != "history")]
        if wrong:
            raise DataError(f"{_where(path, line)}: field(s) {wrong} must be a string or a "
                            "number, not a JSON object or list")
    return rows


def read_catalogue(path: str) -> Catalogue:
    """Reads an items file into a :class:`Catalogue` (see the module docstring)."""
    catalogue = Catalogue()
    for line, row in read_rows(path, _REQUIRED_ITEM_COLUMNS):
        item_id = str(row["item_id"]).strip()
        if not item_id or " " in item_id:
            raise DataError(f"{_where(path, line)}: item_id {item_id!r} must be non-empty and "
                            "contain no spaces")
        if item_id in catalogue:
            raise DataError(f"{_where(path, line)}: duplicate item_id {item_id!r}")
        title = str(row.get("title") or "").strip()
        if not title:
            raise DataError(f"{_where(path, line)}: item {item_id!r} has an empty title; every "
                            "item needs text for the model to read")
        fields = {k: ("" if v is None else str(v)) for k, v in row.items()
                  if k not in ("item_id", "provider")}
        catalogue[item_id] = Item(item_id, fields, str(row.get("provider") or ""))
    return catalogue


def _parse_history(value, path: str, line: int) -> tuple:
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    raise DataError(f"{_where(path, line)}: history must be a list of item ids (JSONL) or "
                    "space-separated item ids (CSV)")


def _parse_label(value, path: str, line: int) -> int:
    text = str(value).strip()
    if text in ("0", "1", "0.0", "1.0", "True", "False", "true", "false"):
        return 1 if text in ("1", "1.0", "True", "true") else 0
    raise DataError(f"{_where(path, line)}: label {value!r} is not 0 or 1; labels are clicks "
                    "(1) and non-clicks (0)")


def read_examples(path: str, catalogue: Catalogue) -> list[Example]:
    """Reads an impressions file, checking every id against ``catalogue``."""
    examples = []
    for line, row in read_rows(path, _REQUIRED_IMPRESSION_COLUMNS):
        candidate = str(row["candidate"]).strip()
        if candidate not in catalogue:
            raise DataError(f"{_where(path, line)}: candidate id {candidate!r} is not in the "
                            "items file; add it to the catalogue or drop the row")
        history = _parse_history(row["history"], path, line)
        for item_id in history:
            if item_id not in catalogue:
                raise DataError(f"{_where(path, line)}: history item id {item_id!r} is not in "
                                "the items file; add it to the catalogue or drop it")
        split = str(row.get("split") or "").strip()
        if split and split not in SPLITS:
            raise DataError(f"{_where(path, line)}: split {split!r} must be one of {SPLITS}")
        timestamp = row.get("timestamp") or 0
        try:
            timestamp = int(float(timestamp))
        except (TypeError, ValueError):
            raise DataError(f"{_where(path, line)}: timestamp {timestamp!r} is not an "
                            "integer (seconds since the epoch)") from None
        extras = {k: v for k, v in row.items() if k not in _KNOWN_IMPRESSION_COLUMNS}
        examples.append(Example(
            user_id=str(row["user_id"]), impression_id=str(row["impression_id"]),
            history=history, candidate=candidate,
            label=_parse_label(row["label"], path, line),
            query=str(row.get("query") or ""), timestamp=timestamp, split=split,
            extras=extras))
    return examples


def _encode(rows: list[dict], columns: list[str], file_format: str,
            list_columns: tuple = ()) -> str:
    buf = io.StringIO()
    if file_format == "jsonl":
        for row in rows:
            buf.write(json.dumps({c: row.get(c, "") for c in columns}) + "\n")
        return buf.getvalue()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([" ".join(row[c]) if c in list_columns else row.get(c, "")
                         for c in columns])
    return buf.getvalue()


def write_catalogue(path: str, catalogue: Catalogue) -> None:
    """Writes a catalogue as CSV or JSONL (chosen by the file extension)."""
    field_names = sorted({k for item in catalogue.values() for k in item.fields})
    columns = ["item_id"] + [c for c in _ITEM_COLUMNS[1:-1] if c in field_names] + \
        [c for c in field_names if c not in _ITEM_COLUMNS] + ["provider"]
    rows = [dict(item.fields, item_id=item.item_id, provider=item.provider)
            for item in catalogue.values()]
    atomic_write_text(path, _encode(rows, columns, _file_format(path)))


def write_examples(path: str, examples: list[Example]) -> None:
    """Writes examples as CSV or JSONL; list-valued extras are space-joined in CSV."""
    extra_names = sorted({k for ex in examples for k in ex.extras})
    columns = list(_KNOWN_IMPRESSION_COLUMNS) + extra_names
    list_columns = ("history",) + tuple(
        k for k in extra_names if any(isinstance(ex.extras.get(k), (list, tuple))
                                      for ex in examples))
    fields = [f.name for f in dataclasses.fields(Example) if f.name != "extras"]
    rows = []
    for ex in examples:
        # A shallow row: dataclasses.asdict deep-copies every value, which dominated
        # writing a large log.
        row = {name: getattr(ex, name) for name in fields}
        row["history"] = list(ex.history)
        row.update(ex.extras)
        rows.append(row)
    atomic_write_text(path, _encode(rows, columns, _file_format(path), list_columns))


def find_data_file(data_dir: str, stem: str) -> str:
    """``<data_dir>/<stem>.csv`` or ``.jsonl``, whichever exists."""
    for ext in (".csv", ".jsonl"):
        candidate = os.path.join(data_dir, stem + ext)
        if tf.io.gfile.exists(candidate):
            return candidate
    raise DataError(f"{data_dir}: no {stem}.csv or {stem}.jsonl found; set data.data_dir to a "
                    f"directory holding them or give data.{stem}_file")


@dataclasses.dataclass
class SplitData:
    """What every source loader returns: the catalogue and examples per split.

    ``info`` records counts and anything skipped or dropped (with the reason), so nothing
    is silently lost; train writes it into the run directory's ``data_info.json``.
    """

    catalogue: Catalogue
    splits: dict  # {"train": [...], "validation": [...], "test": [...]}
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in SPLITS:
            self.splits.setdefault(name, [])
