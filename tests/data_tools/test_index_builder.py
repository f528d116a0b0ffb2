"""The compact merge builder writes exactly what megatron-core's builder writes."""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from data_tools.index_builder import CompactIndexedDatasetBuilder


def shard(prefix: str, docs, dtype) -> str:
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        b.add_document(np.concatenate(doc), [len(s) for s in doc])
    b.finalize(prefix + ".idx")
    return prefix


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_byte_identical_to_upstream(tmp_path, dtype):
    rng = np.random.default_rng(0)
    shards = []
    for k in range(3):
        docs = [[rng.integers(0, 300, size=rng.integers(1, 20)) for _ in range(2)] for _ in range(5 + k)]
        shards.append(shard(str(tmp_path / f"s{k}"), docs, dtype))
    ours, theirs = (
        CompactIndexedDatasetBuilder(str(tmp_path / "a.bin"), dtype),
        IndexedDatasetBuilder(str(tmp_path / "b.bin"), dtype),
    )
    for s in shards:
        ours.add_index(s)
        theirs.add_index(s)
    ours.finalize(str(tmp_path / "a.idx"))
    theirs.finalize(str(tmp_path / "b.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
    ds = IndexedDataset(str(tmp_path / "a"))
    assert len(ds.document_indices) == 1 + 5 + 6 + 7


def test_empty_dataset(tmp_path):
    b = CompactIndexedDatasetBuilder(str(tmp_path / "e.bin"), np.uint16)
    b.finalize(str(tmp_path / "e.idx"))
    u = IndexedDatasetBuilder(str(tmp_path / "u.bin"), np.uint16)
    u.finalize(str(tmp_path / "u.idx"))
    assert (tmp_path / "e.idx").read_bytes() == (tmp_path / "u.idx").read_bytes()
