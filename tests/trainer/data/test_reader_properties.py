"""Property-based: the CSV/JSONL readers and the config loader never crash.

Hypothesis generates and mutates files (truncated rows, stray quotes, wrong encodings,
huge fields, emptied fields, duplicated headers, binary noise, arbitrary text); every case
must end in success or a ``UserInputError`` that names the file (and, where it gives one, a
line inside the file). Any other exception is a bug. Derandomized, so CI runs the same
cases every time; about 2,400 in all.
"""

import os
import re
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer import config as config_lib
from trainer.data import canonical
from trainer.errors import UserInputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

ITEMS_CSV = ("item_id,title,categories,description,provider\n"
             "a,Red laptop,computers,\"fast, light\",acme\n"
             "b,Blue phone,phones,\"a \"\"smart\"\" phone\",globex\n"
             "c,Green chair,furniture,,acme\n")
IMPRESSIONS_CSV = ("user_id,impression_id,history,candidate,label,query,split,timestamp\n"
                   "u1,1,a c,b,1,,train,100\nu1,1,a c,a,0,,train,100\n"
                   "u2,2,,a,0,buy a laptop,test,200\nu2,3,b,c,1,\"chair, green\",,300\n")
ITEMS_JSONL = ('{"item_id": "a", "title": "Red laptop", "categories": "computers"}\n'
               '{"item_id": "b", "title": "Blue phone", "provider": "globex"}\n'
               '{"item_id": "c", "title": "Green chair"}\n')
IMPRESSIONS_JSONL = (
    '{"user_id": "u1", "impression_id": "1", "history": ["a", "c"], "candidate": "b", '
    '"label": 1, "split": "train"}\n'
    '{"user_id": "u1", "impression_id": "1", "history": ["a"], "candidate": "a", "label": 0}\n'
    '{"user_id": "u2", "impression_id": "2", "history": [], "candidate": "c", "label": 1, '
    '"query": "green chair", "timestamp": 5}\n')



def _settings(cases: int) -> settings:
    # 4 x 400 mutated data files + 2 x 200 arbitrary files + 400 configs = 2,400 cases.
    return settings(max_examples=cases, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))

_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): ")


def _mutation():
    """One edit of a byte string, as (kind, position fraction, payload)."""
    fraction = st.floats(min_value=0.0, max_value=1.0)
    return st.one_of(
        st.tuples(st.just("truncate"), fraction, st.just(b"")),
        st.tuples(st.just("insert"), fraction, st.sampled_from(
            [b'"', b'""', b",", b"\n", b"\r", b"\r\n", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf",
             b"{", b"}", b"[", b"]", b":", b"\\", b"'", b"\t", b"null", b"NaN", b" "])),
        st.tuples(st.just("insert"), fraction, st.binary(min_size=1, max_size=12)),
        st.tuples(st.just("insert"), fraction,
                  st.text(min_size=1, max_size=12).map(lambda t: t.encode("utf-8"))),
        st.tuples(st.just("delete"), fraction, st.integers(1, 40).map(lambda n: b"x" * n)),
        st.tuples(st.just("huge"), fraction, st.sampled_from([b"x", b"word "]))
        .map(lambda t: (t[0], t[1], t[2] * (140_000 // len(t[2])))),
        st.tuples(st.just("empty_field"), fraction, st.just(b"")),
        st.tuples(st.just("duplicate_header"), fraction, st.just(b"")),
        st.tuples(st.just("encode"), fraction, st.sampled_from(
            [b"latin-1", b"utf-16", b"cp1252"])),
    )


def _apply(data: bytes, mutations) -> bytes:
    for kind, fraction, payload in mutations:
        at = int(fraction * len(data))
        if kind == "truncate":
            data = data[:at]
        elif kind in ("insert", "huge"):
            data = data[:at] + payload + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(payload):]
        elif kind == "empty_field":
            # Blank the field around `at`: from the previous separator to the next one.
            start = max(data.rfind(b",", 0, at), data.rfind(b"\n", 0, at)) + 1
            ends = [i for i in (data.find(b",", at), data.find(b"\n", at)) if i >= 0]
            data = data[:start] + data[min(ends) if ends else len(data):]
        elif kind == "duplicate_header":
            header, _, rest = data.partition(b"\n")
            first = header.split(b",")[0]
            data = header + b"," + first + b"\n" + rest
        elif kind == "encode":
            try:
                data = data.decode("utf-8").encode(payload.decode(), errors="replace")
            except UnicodeDecodeError:
                pass
    return data


def _check(path: str, data: bytes, read) -> None:
    """``read(path)`` succeeds or raises a UserInputError naming ``path`` (and a line of it)."""
    with open(path, "wb") as f:
        f.write(data)
    try:
        read(path)
    except UserInputError as err:
        message = str(err)
        assert path in message, message
        match = _LINE.match(message)
        if match and match.group("path") == path:
            lines = data.count(b"\n") + 1
            assert 1 <= int(match.group("line")) <= lines, (message, lines)


def _catalogue():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "items.csv")
        with open(path, "w") as f:
            f.write(ITEMS_CSV)
        return canonical.read_catalogue(path)


CATALOGUE = _catalogue()


def _reader(kind):
    if kind == "items":
        return canonical.read_catalogue
    return lambda path: canonical.read_examples(path, CATALOGUE)


@pytest.mark.parametrize("name,base", [
    ("items.csv", ITEMS_CSV), ("impressions.csv", IMPRESSIONS_CSV),
    ("items.jsonl", ITEMS_JSONL), ("impressions.jsonl", IMPRESSIONS_JSONL)])
@_settings(400)
@given(mutations=st.lists(_mutation(), min_size=1, max_size=4))
def test_mutated_data_files_never_crash(name, base, mutations):
    data = _apply(base.encode("utf-8"), mutations)
    with tempfile.TemporaryDirectory() as tmp:
        _check(os.path.join(tmp, name), data, _reader(name.split(".")[0]))


@pytest.mark.parametrize("name", ["items.csv", "impressions.jsonl"])
@_settings(200)
@given(data=st.one_of(st.binary(max_size=300),
                      st.text(max_size=300).map(lambda t: t.encode("utf-8"))))
def test_arbitrary_bytes_never_crash(name, data):
    with tempfile.TemporaryDirectory() as tmp:
        _check(os.path.join(tmp, name), data, _reader(name.split(".")[0]))


TINY_RESOLVED = config_lib.dump_yaml(
    config_lib.load_config(os.path.join(REPO, "configs", "tiny.yaml"))).encode("utf-8")


@_settings(400)
@given(mutations=st.lists(_mutation(), min_size=1, max_size=3))
def test_mutated_configs_never_crash(mutations):
    data = _apply(TINY_RESOLVED, mutations)
    with tempfile.TemporaryDirectory() as tmp:
        _check(os.path.join(tmp, "config.yaml"), data, config_lib.load_config)

