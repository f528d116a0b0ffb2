"""Opening built pair datasets: consistency checks with errors that name the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_polar.data.pair_dataset import (
    FORMAT_NAME,
    FORMAT_VERSION,
    DatasetError,
    manifest_path,
    open_pair_dataset,
    read_manifest,
)

REWARD = 4


def write_documents(prefix: str, documents, *, reward: int = REWARD, pairs_written: int) -> None:
    """A hand-built dataset with megatron-core's own builder: each document a list of sequences."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for sequences in documents:
        builder.add_document(np.array([t for seq in sequences for t in seq]), [len(seq) for seq in sequences])
    builder.finalize(prefix + ".idx")
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tokenizer": {"reward_token_id": reward},
        "counts": {"pairs_written": pairs_written},
    }
    with open(manifest_path(prefix), "w") as f:
        json.dump(manifest, f)


def write_dataset(prefix: str, pairs, *, reward: int = REWARD, pairs_written: int | None = None) -> None:
    """A hand-built pair dataset: each pair is one document of two sequences."""
    written = len(pairs) if pairs_written is None else pairs_written
    write_documents(prefix, [list(pair) for pair in pairs], reward=reward, pairs_written=written)


PAIRS = [([1, 5, 6, REWARD], [1, 7, REWARD]), ([1, 8, REWARD], [1, 9, 9, 9, REWARD])]


def test_open_and_read(tmp_path):
    prefix = str(tmp_path / "ds")
    write_dataset(prefix, PAIRS)
    ds = open_pair_dataset(prefix)
    assert len(ds) == 2
    assert [a.tolist() for a in ds.pair(1)] == [[1, 8, REWARD], [1, 9, 9, 9, REWARD]]
    assert ds.pair_lengths().tolist() == [[4, 3], [3, 5]]
    view = ds.pair_lengths(copy=False)  # the mapped index itself, as the plan writer gathers from it
    assert view.tolist() == [[4, 3], [3, 5]] and view.dtype == np.int32 and not view.flags.owndata
    with pytest.raises(IndexError):
        ds.pair(2)


def test_missing_or_bad_manifest(tmp_path):
    prefix = str(tmp_path / "ds")
    with pytest.raises(DatasetError, match="ds.manifest.json: manifest missing"):
        read_manifest(prefix)
    write_dataset(prefix, PAIRS)
    with open(manifest_path(prefix), "w") as f:
        f.write("{trunc")
    with pytest.raises(DatasetError, match="unreadable"):
        read_manifest(prefix)
    with open(manifest_path(prefix), "w") as f:
        json.dump({"format": FORMAT_NAME, "format_version": 99}, f)
    with pytest.raises(DatasetError, match="version 99"):
        read_manifest(prefix)


def test_inconsistencies_name_the_file(tmp_path):
    p = str(tmp_path / "a")
    write_dataset(p, PAIRS, pairs_written=3)
    with pytest.raises(DatasetError, match=r"a\.idx: 2 documents, manifest says 3"):
        open_pair_dataset(p)
    p = str(tmp_path / "b")
    write_dataset(p, PAIRS, reward=7)
    with pytest.raises(DatasetError, match=r"b\.bin: pair 0 does not end with reward token 7"):
        open_pair_dataset(p)
    p = str(tmp_path / "c")
    write_dataset(p, PAIRS)
    with open(p + ".bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(DatasetError, match=r"c\.bin: size"):
        open_pair_dataset(p)
    p = str(tmp_path / "d")
    write_dataset(p, PAIRS)
    (tmp_path / "d.bin").unlink()
    with pytest.raises(DatasetError, match=r"d\.bin: missing"):
        open_pair_dataset(p)


def test_documents_must_hold_two_sequences(tmp_path):
    prefix = str(tmp_path / "three")
    write_documents(prefix, [[[1, REWARD], [1, REWARD], [1, REWARD]]], pairs_written=1)
    with pytest.raises(DatasetError, match=r"three\.idx: some documents do not hold exactly 2"):
        open_pair_dataset(prefix)


def test_shared_prefix_length():
    from megatron_polar.data.pair_dataset import shared_prefix_length

    a, b = np.array([1, 5, 6, 7, 9, 4]), np.array([1, 5, 6, 8, 4])
    assert shared_prefix_length(a, b) == 3
    # Identical sequences still keep their last token apart (each reward is read there).
    assert shared_prefix_length(a, a.copy()) == len(a) - 1
    assert shared_prefix_length(np.array([1, 4]), np.array([1, 5, 4])) == 1
    assert shared_prefix_length(np.array([4]), np.array([4])) == 0


def test_index_damage_is_found_without_reading_the_whole_index(tmp_path):
    # A truncated index: megatron cannot map the arrays its header announces.
    p = str(tmp_path / "t")
    write_dataset(p, PAIRS)
    with open(p + ".idx", "r+b") as f:
        f.truncate(40)
    with pytest.raises(DatasetError, match=r"t\.idx: cannot read index"):
        open_pair_dataset(p)
    # Bytes appended to the index: the header no longer accounts for the file.
    p = str(tmp_path / "g")
    write_dataset(p, PAIRS)
    with open(p + ".idx", "ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(DatasetError, match=r"g\.idx: \d+ bytes, its header implies"):
        open_pair_dataset(p)
    # A .bin cut short (the build was interrupted and the files mixed up).
    p = str(tmp_path / "s")
    write_dataset(p, PAIRS)
    with open(p + ".bin", "r+b") as f:
        f.truncate(4)
    with pytest.raises(DatasetError, match=r"s\.bin: size 4 does not match the index"):
        open_pair_dataset(p)
    # The manifest's token total disagrees with the files (another build's manifest).
    p = str(tmp_path / "m")
    write_dataset(p, PAIRS)
    manifest = json.loads(open(manifest_path(p)).read())
    manifest["tokens"] = {"total": 16}
    with open(manifest_path(p), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(DatasetError, match=r"m\.bin: 15 tokens, .*m\.manifest\.json says 16"):
        open_pair_dataset(p)
    manifest["tokens"] = {"total": 15}
    with open(manifest_path(p), "w") as f:
        json.dump(manifest, f)
    assert len(open_pair_dataset(p)) == 2


def test_uneven_documents_with_the_right_totals_are_found_by_sampling(tmp_path):
    # 2 documents, 4 sequences (as two pairs would have) but split 1 + 3: only the boundaries differ.
    prefix = str(tmp_path / "uneven")
    write_documents(prefix, [[[1, REWARD]], [[1, REWARD], [1, REWARD], [1, REWARD]]], pairs_written=2)
    with pytest.raises(DatasetError, match=r"uneven\.idx: some documents do not hold exactly 2"):
        open_pair_dataset(prefix)
