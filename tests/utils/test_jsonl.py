"""utils/jsonl.py: the one JSONL reader, as the scoring tools use it (data_tools' use: tests/data_tools)."""

import gzip

import pytest

from megatron_polar.utils.jsonl import count_lines, iter_jsonl


def test_rows_errors_and_resumption_carry_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n"\xff"\n[2]\n')
    got = list(iter_jsonl(path))
    assert [(n, obj) for n, obj, _ in got] == [(1, {"a": 1}), (3, None), (4, None), (5, [2])]
    assert got[1][2].startswith("invalid JSON (") and got[2][2] == "not UTF-8 at byte 1"
    assert [n for n, _, _ in iter_jsonl(path, start_line=3)] == [4, 5]
    assert count_lines(path) == 5


def test_gzip_input_and_line_limit(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"k": "short"}\n{"k": "' + "x" * 100 + '"}\n')
    got = list(iter_jsonl(path, max_line_bytes=50))
    assert got[0] == (1, {"k": "short"}, None)
    assert got[1] == (2, None, "line longer than 50 bytes")


def test_missing_file_is_an_oserror(tmp_path):
    with pytest.raises(OSError):
        next(iter_jsonl(tmp_path / "absent.jsonl"))
