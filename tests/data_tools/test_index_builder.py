"""``IndexedDatasetWriter`` and ``index_format`` write and read exactly what megatron-core does.

megatron-core (imported here, in the test only) is the independent reference: its
``IndexedDatasetBuilder`` writes the expected bytes, its ``_IndexReader`` and ``IndexedDataset`` read
ours back, and its ``DType`` gives the expected codes and token dtypes.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import (
    DType,
    IndexedDataset,
    IndexedDatasetBuilder,
    _IndexReader,
)

from data_tools.build import token_dtype
from data_tools.index_builder import IndexedDatasetWriter
from megatron_polar.data import index_format
from megatron_polar.data.index_format import DTYPE_CODES, optimal_dtype, read_index
from megatron_polar.utils.errors import DatasetError

DTYPES = [np.uint16, np.int32]


def random_docs(rng: np.random.Generator, n: int, high: int) -> list[list[np.ndarray]]:
    """``n`` documents of two sequences of 1-40 ids below ``high``."""
    return [[rng.integers(0, high, size=rng.integers(1, 40)) for _ in range(2)] for _ in range(n)]


def write_both(tmp_path, name: str, docs, dtype) -> tuple[str, str]:
    """The same documents through our writer (``<name>-ours``) and upstream's (``<name>-mcore``)."""
    ours, theirs = str(tmp_path / f"{name}-ours"), str(tmp_path / f"{name}-mcore")
    w = IndexedDatasetWriter(ours + ".bin", dtype)
    u = IndexedDatasetBuilder(theirs + ".bin", dtype=dtype)
    for doc in docs:
        w.add_document(np.concatenate(doc), [len(s) for s in doc])
        u.add_document(np.concatenate(doc), [len(s) for s in doc])
    w.finalize(ours + ".idx")
    u.finalize(theirs + ".idx")
    return ours, theirs


def assert_same_files(a: str, b: str) -> None:
    for ext in (".bin", ".idx"):
        with open(a + ext, "rb") as fa, open(b + ext, "rb") as fb:
            assert fa.read() == fb.read(), f"{a}{ext} differs from {b}{ext}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_documents_byte_identical_to_upstream_and_read_by_megatron(tmp_path, dtype):
    high = 60_000 if dtype is np.uint16 else 92_544  # ids that need the whole dtype
    docs = random_docs(np.random.default_rng(1), 50, high)
    ours, theirs = write_both(tmp_path, "docs", docs, dtype)
    assert_same_files(ours, theirs)
    ds = IndexedDataset(ours, mmap=True)
    assert ds.index.dtype == dtype and len(ds.document_indices) == len(docs) + 1
    for i, doc in enumerate(docs):
        for j, seq in enumerate(doc):
            np.testing.assert_array_equal(ds[2 * i + j], seq.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_merge_with_empty_shards_byte_identical_to_upstream(tmp_path, dtype):
    """``add_index`` over shards (two of them empty, one at each end of the run) equals upstream's."""
    rng = np.random.default_rng(2)
    shards = []
    for k, n in enumerate([0, 5, 7, 0, 3, 0]):
        ours, theirs = write_both(tmp_path, f"s{k}", random_docs(rng, n, 300), dtype)
        assert_same_files(ours, theirs)
        shards.append(ours)
    merged = IndexedDatasetWriter(str(tmp_path / "a.bin"), dtype)
    reference = IndexedDatasetBuilder(str(tmp_path / "b.bin"), dtype=dtype)
    for s in shards:
        merged.add_index(s)
        reference.add_index(s)
    merged.finalize(str(tmp_path / "a.idx"))
    reference.finalize(str(tmp_path / "b.idx"))
    assert_same_files(str(tmp_path / "a"), str(tmp_path / "b"))
    ds = IndexedDataset(str(tmp_path / "a"))
    assert len(ds.document_indices) == 1 + 5 + 7 + 3
    assert list(merged.sequence_lengths) == ds.sequence_lengths.tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_dataset_identical_to_upstream(tmp_path, dtype):
    ours, theirs = write_both(tmp_path, "empty", [], dtype)
    assert_same_files(ours, theirs)
    assert read_index(ours + ".idx").document_indices.tolist() == [0]


def test_pointers_written_in_blocks_equal_upstream(tmp_path, monkeypatch):
    """The pointer loop crosses block boundaries (a block of 3 sequences) with the same bytes."""
    monkeypatch.setattr(index_format, "_POINTER_BLOCK", 3)
    ours, theirs = write_both(tmp_path, "blocks", random_docs(np.random.default_rng(3), 11, 300), np.int32)
    assert_same_files(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reader_matches_megatron_index_reader(tmp_path, dtype):
    _, theirs = write_both(tmp_path, "r", random_docs(np.random.default_rng(4), 9, 300), dtype)
    ours = read_index(theirs + ".idx")
    ref = _IndexReader(theirs + ".idx", multimodal=False)
    assert ours.dtype == np.dtype(ref.dtype)
    np.testing.assert_array_equal(ours.sequence_lengths, ref.sequence_lengths)
    np.testing.assert_array_equal(ours.sequence_pointers, ref.sequence_pointers)
    np.testing.assert_array_equal(ours.document_indices, ref.document_indices)


def test_reader_refuses_broken_indexes_naming_the_file(tmp_path):
    _, good = write_both(tmp_path, "g", random_docs(np.random.default_rng(5), 4, 300), np.uint16)
    data = (tmp_path / "g-mcore.idx").read_bytes()
    cases = {
        "magic": (b"XXIDIDX\x00\x00" + data[9:], "not a megatron-core index"),
        "version": (data[:9] + struct.pack("<Q", 2) + data[17:], "index version 2"),
        "dtype": (data[:17] + struct.pack("<B", 99) + data[18:], "unknown dtype code 99"),
        "truncated": (data[:-8], "its header"),
        "short": (data[:20], "not a megatron-core index"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.idx"
        path.write_bytes(content)
        with pytest.raises(DatasetError, match=rf"{path}: .*{message}"):
            read_index(str(path))
    mm = IndexedDatasetBuilder(str(tmp_path / "mm.bin"), dtype=np.uint16, multimodal=True)
    mm.add_document(np.arange(4), [2, 2], modes=[0, 1])
    mm.finalize(str(tmp_path / "mm.idx"))
    with pytest.raises(DatasetError, match="multimodal"):
        read_index(str(tmp_path / "mm.idx"))


def test_add_index_refuses_other_dtype_and_short_bin(tmp_path):
    _, shard = write_both(tmp_path, "x", random_docs(np.random.default_rng(6), 4, 300), np.uint16)
    with pytest.raises(DatasetError, match="dtype uint16"):
        IndexedDatasetWriter(str(tmp_path / "o.bin"), np.int32).add_index(shard)
    with open(shard + ".bin", "r+b") as f:
        f.truncate(6)
    with pytest.raises(DatasetError, match=rf"{shard}.bin: 6 bytes, its index implies"):
        IndexedDatasetWriter(str(tmp_path / "p.bin"), np.uint16).add_index(shard)


def test_add_document_refuses_lengths_that_do_not_add_up(tmp_path):
    w = IndexedDatasetWriter(str(tmp_path / "w.bin"), np.uint16)
    with pytest.raises(ValueError, match=r"5 tokens given sequence lengths \[2, 2\]"):
        w.add_document(np.arange(5), [2, 2])
    w.add_document(np.arange(4), [1, 3])
    w.finalize(str(tmp_path / "w.idx"))
    assert read_index(str(tmp_path / "w.idx")).sequence_lengths.tolist() == [1, 3]


@pytest.mark.parametrize("cardinality", [None, 0, 300, 65498, 65499, 65500, 65501, 92544, 2**31 - 1])
def test_token_dtype_is_megatrons_optimal_dtype(cardinality):
    expected = np.dtype(DType.optimal_dtype(cardinality))
    assert optimal_dtype(cardinality) == expected
    if cardinality is not None:
        assert token_dtype(cardinality) == expected


def test_dtype_codes_are_megatrons():
    assert {d: DType.code_from_dtype(d.type) for d in DTYPE_CODES} == DTYPE_CODES
    assert len(DTYPE_CODES) == len(DType)
