"""utils/io.py: the one atomic-write helper (target replaced whole or not at all, no temp left)."""

import json
import os

import pytest

from megatron_polar.utils.io import (
    atomic_open,
    check_writable,
    temp_path,
    write_json_atomic,
    write_text_atomic,
)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target) as f:
            f.write("half a new fi")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["state.json"]


@pytest.mark.parametrize("fsync", [False, True])
def test_text_and_json_land_whole(tmp_path, fsync):
    write_text_atomic(tmp_path / "a.txt", "héllo\n", fsync=fsync)
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    write_json_atomic(tmp_path / "b.json", {"k": "é", "n": [1, 2]})
    assert (tmp_path / "b.json").read_text() == json.dumps({"k": "é", "n": [1, 2]}, indent=2) + "\n"
    write_json_atomic(tmp_path / "c.json", {"k": "é"}, indent=None, ensure_ascii=False, newline=False)
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == '{"k": "é"}'
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.json", "c.json"]


def test_temporary_is_a_hidden_sibling_and_refusals_name_the_file(tmp_path):
    tmp = temp_path(tmp_path / "out.jsonl")
    assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(".out.jsonl.tmp-")
    (tmp_path / "out.jsonl").write_text("")
    with pytest.raises(FileExistsError, match="out.jsonl"):
        check_writable([str(tmp_path / "out.jsonl")], overwrite=False)
    check_writable([str(tmp_path / "out.jsonl")], overwrite=True)
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "a"):
            pass
