"""Reading and writing the canonical files, and every bad input the readers reject."""

import json

import pytest

from trainer.data import canonical
from trainer.data.canonical import DataError, Example, Item

ITEMS_CSV = "item_id,title,categories,provider\na,Red laptop,computers,acme\nb,Blue phone,phones,globex\n"
IMPRESSIONS_CSV = ("user_id,impression_id,history,candidate,label,query,split\n"
                   "u1,1,a,b,1,,train\nu1,1,a,a,0,,train\nu2,2,,a,0,buy a laptop,test\n")


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def test_reads_csv_and_jsonl_alike(tmp_path):
    items = canonical.read_catalogue(write(tmp_path, "items.csv", ITEMS_CSV))
    assert items["a"].title == "Red laptop" and items["a"].provider == "acme"
    assert items["b"].text(["title", "categories"]) == "Blue phone. phones"
    examples = canonical.read_examples(write(tmp_path, "imp.csv", IMPRESSIONS_CSV), items)
    assert [e.label for e in examples] == [1, 0, 0]
    assert examples[0].history == ("a",) and examples[2].history == ()
    assert examples[2].query == "buy a laptop" and examples[2].split == "test"

    jsonl = "\n".join(json.dumps(r) for r in [
        {"user_id": "u1", "impression_id": "1", "history": ["a"], "candidate": "b", "label": 1},
        {"user_id": "u1", "impression_id": "1", "history": ["a"], "candidate": "a", "label": 0,
         "true_probability": 0.2}])
    from_jsonl = canonical.read_examples(write(tmp_path, "imp.jsonl", jsonl), items)
    assert from_jsonl[0].history == ("a",) and from_jsonl[1].extras == {"true_probability": 0.2}


def test_write_then_read_round_trips(tmp_path):
    catalogue = canonical.Catalogue(
        a=Item("a", {"title": "One, with comma", "description": 'say "hi"'}, "p1"),
        b=Item("b", {"title": "Two"}, ""))
    examples = [Example("u", "i1", ("a",), "b", 1, query="q, q", timestamp=5, split="train",
                        extras={"true_probability": 0.5, "true_reason_history": ["a"]})]
    for fmt in ("csv", "jsonl"):
        canonical.write_catalogue(str(tmp_path / f"items.{fmt}"), catalogue)
        canonical.write_examples(str(tmp_path / f"imp.{fmt}"), examples)
        items = canonical.read_catalogue(str(tmp_path / f"items.{fmt}"))
        assert items["a"].fields["title"] == "One, with comma"
        assert items["a"].fields["description"] == 'say "hi"'
        assert items["a"].provider == "p1"
        back = canonical.read_examples(str(tmp_path / f"imp.{fmt}"), items)[0]
        assert (back.history, back.candidate, back.label, back.query, back.timestamp) == \
            (("a",), "b", 1, "q, q", 5)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("name,text,message", [
    ("items.csv", "", "file is empty"),
    ("items.csv", "item_id,title\n", "no data rows"),
    ("items.csv", "item_id,name\na,x\n", r"items.csv:1: missing required column\(s\) \['title'\]"),
    ("items.csv", "item_id,title\na,x\nb,y,extra\n", r"items.csv:3: malformed row: 3 fields"),
    ("items.csv", "item_id,title\na,x\na,y\n", r"items.csv:3: duplicate item_id 'a'"),
    ("items.csv", "item_id,title\na,\n", r"items.csv:2: item 'a' has an empty title"),
    ("items.csv", "item_id,title\na b,x\n", r"items.csv:2: item_id 'a b'"),
    ("items.jsonl", '{"item_id": "a", "title": "x"}\n{"item_id": "b",\n', r"items.jsonl:2: malformed JSON"),
    ("items.jsonl", '["a", "x"]\n', r"items.jsonl:1: each line must be a JSON object"),
    ("items.jsonl", '{"item_id": "a"}\n', r"items.jsonl:1: missing required field\(s\) \['title'\]"),
    ("items.txt", "item_id,title\na,x\n", "unknown file type"),
    # An unbalanced quote is named where it opens, not where the reader gave up.
    ("items.csv", 'item_id,title\na,"x\n' + "".join(f"i{k},t{k}\n" for k in range(400)),
     r"items.csv:2: malformed CSV: a quoted field that starts on this line is never closed"),
    ("items.csv", 'item_id,title\na,b\nc,"d\ne,f\ng",h,i\n',
     r"items.csv:3: malformed row: 4 fields .*lines 3-5"),
    ("items.csv", 'item_id,title\na,"b"c\n', r"items.csv:2: malformed CSV: ',' expected"),
    ("items.csv", "item_id,title,title\na,x,y\n", r"items.csv:1: duplicate column\(s\) \['title'\]"),
    ("items.jsonl", "[" * 100000 + "\n", r"items.jsonl:1: malformed JSON: nested too deeply"),
    ("items.jsonl", '{"item_id": {"a": 1}, "title": "x"}\n', r"items.jsonl:1: field\(s\) \['item_id'\]"),
])
def test_bad_item_files(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        canonical.read_catalogue(write(tmp_path, name, text))


def test_non_utf8_names_the_line(tmp_path):
    path = write(tmp_path, "items.csv", "item_id,title\na,ok\nb,Caf\xe9\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"items.csv:3: text is not valid UTF-8"):
        canonical.read_catalogue(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        canonical.read_catalogue(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize("row,message", [
    ("u1,1,a,b,2,,", r"imp.csv:2: label '2' is not 0 or 1"),
    ("u1,1,a,b,yes,,", r"imp.csv:2: label 'yes' is not 0 or 1"),
    ("u1,1,a,zz,1,,", r"imp.csv:2: candidate id 'zz' is not in the items file"),
    ("u1,1,a qq,b,1,,", r"imp.csv:2: history item id 'qq' is not in the items file"),
    ("u1,1,a,b,1,,holdout", r"imp.csv:2: split 'holdout' must be one of"),
    ("u1,1,a,b,1,", r"imp.csv:2: malformed row"),
    (",1,a,b,1,,", r"imp.csv:2: required field\(s\) \['user_id'\] are empty"),
    ("u1, ,a,b,,,", r"imp.csv:2: required field\(s\) \['impression_id', 'label'\] are empty"),
])
def test_bad_impression_rows(tmp_path, row, message):
    items = canonical.read_catalogue(write(tmp_path, "items.csv", ITEMS_CSV))
    path = write(tmp_path, "imp.csv", "user_id,impression_id,history,candidate,label,query,split\n"
                 + row + "\n")
    with pytest.raises(DataError, match=message):
        canonical.read_examples(path, items)


def test_missing_impression_column(tmp_path):
    items = canonical.read_catalogue(write(tmp_path, "items.csv", ITEMS_CSV))
    path = write(tmp_path, "imp.csv", "user_id,history,candidate,label\nu,a,b,1\n")
    with pytest.raises(DataError, match=r"imp.csv:1: missing required column\(s\) \['impression_id'\]"):
        canonical.read_examples(path, items)


def test_bad_timestamp(tmp_path):
    items = canonical.read_catalogue(write(tmp_path, "items.csv", ITEMS_CSV))
    path = write(tmp_path, "imp.csv", "user_id,impression_id,history,candidate,label,timestamp\n"
                 "u,1,a,b,1,yesterday\n")
    with pytest.raises(DataError, match=r"imp.csv:2: timestamp 'yesterday'"):
        canonical.read_examples(path, items)


def test_long_text_fields_are_read(tmp_path):
    description = "word " * 60000  # 300 KB, over the csv module's default 128 KiB field limit
    path = write(tmp_path, "items.csv", f'item_id,title,description\na,x,"{description}"\n')
    assert canonical.read_catalogue(path)["a"].fields["description"] == description


def test_jsonl_line_numbers_match_an_editors(tmp_path):
    # U+2028 inside a JSON string is valid JSON; str.splitlines() would split there.
    path = write(tmp_path, "items.jsonl", '{"item_id": "a", "title": "x\u2028y"}\n'
                 '{"item_id": "b", "title": "z"}\n{"item_id": "c"}\n')
    with pytest.raises(DataError, match=r"items.jsonl:3: missing required field"):
        canonical.read_catalogue(path)
