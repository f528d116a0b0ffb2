"""An ``IndexedDatasetBuilder`` whose merge state stays small: the parent of a big build uses it.

Upstream megatron-core keeps the merged index as Python lists of numpy scalars (~200 bytes per pair),
calls ``gc.collect()`` on every ``add_index`` and computes sequence pointers in a Python loop at
``finalize``. This subclass keeps the same state in packed ``array`` buffers (12 bytes per sequence +
8 per document), skips the per-shard collection and computes pointers with numpy. The files it writes
are byte-identical to upstream's (``tests/data_tools/test_index_builder.py`` checks that).
"""

from __future__ import annotations

import shutil
from array import array

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder, _IndexWriter


class _NumpyPointerIndexWriter(_IndexWriter):
    """Upstream's index writer with vectorised sequence pointers (same bytes)."""

    def _sequence_pointers(self, sequence_lengths) -> np.ndarray:
        itemsize = np.dtype(self.dtype).itemsize
        lengths = np.asarray(sequence_lengths, dtype=np.int64)
        pointers = np.zeros(lengths.size, dtype=np.int64)
        np.cumsum(lengths[:-1] * itemsize, out=pointers[1:])
        return pointers


class CompactIndexedDatasetBuilder(IndexedDatasetBuilder):
    """Drop-in for the parent's merge-only use: ``add_index`` shards, then ``finalize``."""

    def __init__(self, bin_path: str, dtype: type[np.number] = np.int32) -> None:
        super().__init__(bin_path, dtype=dtype)
        self.sequence_lengths = array("i")
        self.document_indices = array("q", [0])

    def add_document(self, tensor, lengths: list[int], modes=None) -> None:
        """Append one document of ``len(lengths)`` sequences."""
        self.data_file.write(np.asarray(tensor, dtype=self.dtype).tobytes(order="C"))
        self.sequence_lengths.extend(int(n) for n in lengths)
        self.document_indices.append(len(self.sequence_lengths))

    def add_index(self, path_prefix: str) -> None:
        """Append a whole shard dataset (index and tokens)."""
        shard = IndexedDataset(path_prefix, mmap=True)
        if np.dtype(shard.index.dtype) != np.dtype(self.dtype):
            raise ValueError(f"{path_prefix}: dtype {shard.index.dtype} differs from {self.dtype}")
        offset = len(self.sequence_lengths)
        self.sequence_lengths.frombytes(np.asarray(shard.sequence_lengths, dtype=np.int32).tobytes())
        docs = np.asarray(shard.document_indices, dtype=np.int64)[1:] + offset
        self.document_indices.frombytes(docs.tobytes())
        del shard, docs
        with open(path_prefix + ".bin", "rb") as f:
            shutil.copyfileobj(f, self.data_file, 1 << 22)

    def finalize(self, idx_path: str) -> None:
        """Close the ``.bin`` and write the ``.idx``."""
        self.data_file.close()
        with _NumpyPointerIndexWriter(idx_path, self.dtype) as writer:
            writer.write(
                np.frombuffer(self.sequence_lengths, dtype=np.int32),
                None,
                np.frombuffer(self.document_indices, dtype=np.int64),
            )
