"""Streaming JSONL input: compression, line limits, bad-row accounting."""

from __future__ import annotations

import pickle

import pytest

from data_tools.records import BadRows, InputError, RecordError, iter_raw_lines, iter_rows, parse_line
from tests.support.text_data import write_jsonl


@pytest.mark.parametrize("compress", [None, "gz", "zst"])
def test_reads_all_formats(tmp_path, compress):
    suffix = {"gz": ".jsonl.gz", "zst": ".jsonl.zst"}.get(compress, ".jsonl")
    path = write_jsonl(tmp_path / f"x{suffix}", [{"a": i} for i in range(1000)], compress=compress)
    bad = BadRows()
    rows = list(iter_rows([path], bad))
    assert [r["a"] for _, r in rows] == list(range(1000)) and bad.total == 0
    assert rows[7][0] == f"{path}:8"


def test_multi_frame_zst(tmp_path):
    import zstandard

    c = zstandard.ZstdCompressor()
    path = tmp_path / "m.jsonl.zst"
    path.write_bytes(c.compress(b'{"a": 1}\n') + c.compress(b'{"a": 2}\n'))
    assert [r["a"] for _, r in iter_rows([str(path)], BadRows())] == [1, 2]


@pytest.mark.parametrize("compress", ["gz", "zst"])
def test_truncated_compressed_file_is_an_error(tmp_path, compress):
    path = write_jsonl(
        tmp_path / f"t.jsonl.{compress}", [{"a": "x" * 50, "i": i} for i in range(5000)], compress=compress
    )
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.jsonl." + compress):
        list(iter_rows([path], BadRows()))


def test_long_line_skipped_without_holding_it(tmp_path):
    path = tmp_path / "long.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"a": 1}\n{"a": "' + b"x" * 5000 + b'"}\n{"a": 3}\n')
    lines = list(iter_raw_lines(str(path), max_line_bytes=1000))
    assert [(n, raw is None) for n, raw in lines] == [(1, False), (2, True), (3, False)]
    bad = BadRows()
    assert [r["a"] for _, r in iter_rows([str(path)], bad, max_line_bytes=1000)] == [1, 3]
    assert bad.counts == {"line_too_long": 1} and bad.examples["line_too_long"][0].startswith(f"{path}:2")


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{oops", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"a": "\xff\xfe"}', "invalid_utf8"),
        (None, "line_too_long"),
    ],
)
def test_parse_line_reasons(raw, reason):
    with pytest.raises(RecordError) as e:
        parse_line(raw, "f.jsonl:3")
    assert e.value.reason == reason and "f.jsonl:3" in str(e.value)


def test_strict_raises_with_location(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"a": 1}, "{bad"])
    with pytest.raises(RecordError, match=r"s.jsonl:2"):
        list(iter_rows([path], BadRows(), strict=True))


def test_bad_rows_caps_examples_and_pickles():
    bad = BadRows(max_examples=2)
    for i in range(5):
        bad.add(RecordError("malformed_json", "x", f"f:{i}"))
    assert bad.counts["malformed_json"] == 5 and len(bad.examples["malformed_json"]) == 2
    err = pickle.loads(pickle.dumps(RecordError("empty_field", "'prompt' is empty", "f:9")))
    assert (err.reason, err.location) == ("empty_field", "f:9")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl"):
        list(iter_rows([str(tmp_path / "nope.jsonl")], BadRows()))
