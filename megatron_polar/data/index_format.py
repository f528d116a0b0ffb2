"""megatron-core's MMap indexed-dataset format, read and written with numpy and ``struct`` alone.

``data_tools`` writes the files megatron-core's ``IndexedDataset`` reads at training time, but it does
not import megatron-core to do so: ``megatron.core.datasets.indexed_dataset`` imports torch and the
whole ``megatron.core`` package (~11 s of CPU per process), a fixed cost every ``build`` and ``merge``
process, every worker pool and every SLURM array task would pay. The format is small and fixed; it is
described here from megatron-core 0.16.1, ``megatron/core/datasets/indexed_dataset.py``:

* ``<prefix>.bin``: the tokens of every sequence back to back, in the dataset's dtype, C order, no
  header (``IndexedDatasetBuilder.add_document``, lines 979-997).
* ``<prefix>.idx`` (``_IndexWriter.__enter__``/``write``, lines 135-211):

  ====================  =====================================================================
  9 bytes               ``_INDEX_HEADER`` = ``b"MMIDIDX\\x00\\x00"`` (line 47)
  ``<Q``                version, always 1
  ``<B``                dtype code (``DType``, lines 50-60: uint8 1, int8 2, int16 3, int32 4,
                        int64 5, float64 6, float32 7, uint16 8)
  ``<Q``                sequence count ``n``
  ``<Q``                document count ``d`` (the length of ``document_indices``, leading 0 included)
  ``int32 [n]``         sequence lengths, in tokens
  ``int64 [n]``         sequence pointers: byte offset of each sequence in the ``.bin``
                        (``_sequence_pointers``, lines 213-230: running sum of length x itemsize)
  ``int64 [d]``         document indices: sequence index where each document ends, starting with 0
  ``int8 [n]``          sequence modes, multimodal datasets only (never written here)
  ====================  =====================================================================

  The arrays are native-endian (``ndarray.tobytes``) and the header's integers little-endian, as
  upstream writes them. The header is 34 bytes (``_IndexReader.__init__``, lines 262-277).

``tests/data_tools/test_index_builder.py`` checks these files byte for byte against megatron-core's own
``IndexedDatasetBuilder`` and reads them back with megatron-core's ``IndexedDataset``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from megatron_polar.utils.errors import DatasetError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = len(INDEX_HEADER) + 8 + 1 + 8 + 8  # magic, version, dtype code, two counts = 34

# megatron-core's DType codes (indexed_dataset.py lines 50-60).
DTYPE_CODES: dict[np.dtype, int] = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.int16): 3,
    np.dtype(np.int32): 4,
    np.dtype(np.int64): 5,
    np.dtype(np.float64): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.uint16): 8,
}
_DTYPES_BY_CODE = {code: dtype for dtype, code in DTYPE_CODES.items()}

# Pointers are written this many sequences at a time, so writing the index of 702M sequences (the
# paper's 351M pairs) needs 32 MiB for them, not 5.6 GB.
_POINTER_BLOCK = 1 << 22


def optimal_dtype(cardinality: int | None) -> np.dtype:
    """The token dtype for ``cardinality`` distinct ids: uint16 below 65500, else int32.

    megatron-core's ``DType.optimal_dtype`` (indexed_dataset.py lines 107-119), threshold included.
    """
    return np.dtype(np.uint16 if cardinality is not None and cardinality < 65500 else np.int32)


def dtype_code(dtype) -> int:
    """megatron-core's code for ``dtype``; ValueError for a dtype the format cannot hold."""
    try:
        return DTYPE_CODES[np.dtype(dtype)]
    except (KeyError, TypeError) as e:
        raise ValueError(f"dtype {dtype!r} has no megatron-core indexed-dataset code") from e


@dataclass(frozen=True)
class IndexArrays:
    """The arrays of one ``.idx`` file, memory-mapped (valid while this object is referenced)."""

    path: str
    dtype: np.dtype  # of the tokens in the matching .bin
    sequence_lengths: np.ndarray  # int32 [n]
    sequence_pointers: np.ndarray  # int64 [n]
    document_indices: np.ndarray  # int64 [d], document_indices[0] == 0, [-1] == n

    @property
    def token_count(self) -> int:
        """Tokens the ``.bin`` holds, by the index."""
        return int(self.sequence_lengths.sum(dtype=np.int64))


def read_index(idx_path: str) -> IndexArrays:
    """Read and check the header of ``idx_path`` and map its arrays.

    Checks what a truncated, foreign or multimodal file would break: the magic, the version, the dtype
    code, the file size the counts imply, and both ends of the document indices.

    Raises:
        DatasetError: naming the file and the field that is wrong.
    """
    try:
        size = os.path.getsize(idx_path)
        with open(idx_path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise DatasetError(f"{idx_path}: cannot read index: {e}") from e
    if len(head) < HEADER_BYTES or head[: len(INDEX_HEADER)] != INDEX_HEADER:
        raise DatasetError(f"{idx_path}: not a megatron-core index (header {head[:9]!r})")
    version, code, n, d = struct.unpack_from("<QBQQ", head, len(INDEX_HEADER))
    if version != INDEX_VERSION:
        raise DatasetError(f"{idx_path}: index version {version}, expected {INDEX_VERSION}")
    if code not in _DTYPES_BY_CODE:
        raise DatasetError(f"{idx_path}: unknown dtype code {code}")
    expected = HEADER_BYTES + 4 * n + 8 * n + 8 * d
    if size == expected + n and n:
        raise DatasetError(f"{idx_path}: a multimodal index (per-sequence modes), not a pair dataset")
    if size != expected or d < 1:
        raise DatasetError(
            f"{idx_path}: {size} bytes, its header ({n} sequences, {d} document indices) implies {expected}"
        )
    buf = np.memmap(idx_path, dtype=np.uint8, mode="r")
    lengths = np.frombuffer(buf, dtype=np.int32, count=n, offset=HEADER_BYTES)
    pointers = np.frombuffer(buf, dtype=np.int64, count=n, offset=HEADER_BYTES + 4 * n)
    docs = np.frombuffer(buf, dtype=np.int64, count=d, offset=HEADER_BYTES + 12 * n)
    if int(docs[0]) != 0 or int(docs[-1]) != n:
        raise DatasetError(
            f"{idx_path}: document indices run from {int(docs[0])} to {int(docs[-1])}, not 0 to {n}"
        )
    return IndexArrays(idx_path, _DTYPES_BY_CODE[code], lengths, pointers, docs)


def write_index(idx_path: str, dtype, sequence_lengths, document_indices) -> None:
    """Write ``idx_path`` for ``.bin`` tokens of ``dtype``: the bytes megatron-core's ``_IndexWriter``
    writes for the same lengths and document indices (no sequence modes).

    ``sequence_lengths`` and ``document_indices`` are anything with the buffer protocol or array-like
    (``array('i')``/``array('q')`` buffers are read without a copy). Pointers are computed in blocks
    with numpy instead of upstream's per-sequence Python loop: same int64 values, bounded memory.
    """
    code = dtype_code(dtype)
    itemsize = np.dtype(dtype).itemsize
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    docs = np.asarray(document_indices, dtype=np.int64)
    with open(idx_path, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", INDEX_VERSION))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", lengths.size))
        f.write(struct.pack("<Q", docs.size))
        f.write(lengths.tobytes(order="C"))
        offset = 0  # byte offset of the next sequence; a Python int cannot overflow
        for lo in range(0, lengths.size, _POINTER_BLOCK):
            block = lengths[lo : lo + _POINTER_BLOCK].astype(np.int64) * itemsize
            ends = np.cumsum(block)
            f.write((ends - block + offset).tobytes(order="C"))
            offset += int(ends[-1])
        f.write(docs.tobytes(order="C"))
