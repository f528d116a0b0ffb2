"""``IndexedDatasetWriter``: writes a megatron-core indexed dataset without importing megatron-core.

Used for every ``.bin``/``.idx`` that ``data_tools`` writes: each chunk's shard (``encode_chunk``), the
parent's merge of its chunks (``build``) and the merge of shard builds (``merge``). Its files are
byte-identical to megatron-core's ``IndexedDatasetBuilder`` (megatron/core/datasets/indexed_dataset.py,
``add_document``/``add_index``/``finalize``, lines 979-1038; ``tests/data_tools/test_index_builder.py``
compares them). The format itself is in :mod:`megatron_polar.data.index_format`.

What differs from upstream is the state it keeps: upstream holds the index as Python lists (~200 bytes
per pair once ``add_index`` has extended them with numpy scalars), calls ``gc.collect()`` on every
``add_index`` and computes pointers in a Python loop; this writer keeps packed ``array`` buffers
(4 bytes per sequence + 8 per document, so 16 bytes per pair), and pointers are computed in numpy
blocks when the ``.idx`` is written.
"""

from __future__ import annotations

import os
import shutil
from array import array

import numpy as np

from megatron_polar.data.index_format import dtype_code, read_index, write_index
from megatron_polar.utils.errors import DatasetError

_COPY_BLOCK = 1 << 22


class IndexedDatasetWriter:
    """Append documents or whole datasets to ``bin_path``; :meth:`finalize` writes the ``.idx``.

    The caller owns the file names (``build`` and ``merge`` pass temporary ones and rename them).
    """

    def __init__(self, bin_path: str, dtype=np.int32) -> None:
        dtype_code(dtype)  # refuse a dtype the format cannot name before creating the file
        self.dtype = np.dtype(dtype)
        self.data_file = open(bin_path, "wb")
        self.sequence_lengths = array("i")  # int32, as stored in the .idx
        self.document_indices = array("q", [0])  # int64, the leading 0 included
        assert self.sequence_lengths.itemsize == 4 and self.document_indices.itemsize == 8

    def add_document(self, tokens, lengths) -> None:
        """Append one document: ``tokens`` (any integer array-like) holding ``len(lengths)`` sequences.

        The tokens are cast as upstream casts them (``numpy.array(tokens, dtype)``).

        Raises:
            ValueError: the lengths do not add up to the token count.
        """
        data = np.asarray(tokens, dtype=self.dtype)
        before = len(self.sequence_lengths)
        self.sequence_lengths.extend(int(n) for n in lengths)
        if sum(self.sequence_lengths[before:]) != data.size:
            del self.sequence_lengths[before:]
            raise ValueError(f"document of {data.size} tokens given sequence lengths {list(lengths)}")
        self.data_file.write(data.tobytes(order="C"))
        self.document_indices.append(len(self.sequence_lengths))

    def add_index(self, path_prefix: str) -> None:
        """Append the whole dataset ``<path_prefix>.{idx,bin}`` (index and tokens); it may be empty.

        Raises:
            DatasetError: its index is unreadable, of another dtype, or disagrees with its ``.bin`` size.
        """
        index = read_index(path_prefix + ".idx")
        bin_path = path_prefix + ".bin"
        if index.dtype != self.dtype:
            raise DatasetError(f"{index.path}: dtype {index.dtype}, this dataset is {self.dtype}")
        expected = index.token_count * self.dtype.itemsize
        if not os.path.isfile(bin_path) or os.path.getsize(bin_path) != expected:
            got = os.path.getsize(bin_path) if os.path.isfile(bin_path) else "missing"
            raise DatasetError(f"{bin_path}: {got} bytes, its index implies {expected}")
        offset = len(self.sequence_lengths)
        self.sequence_lengths.frombytes(index.sequence_lengths.tobytes())
        self.document_indices.frombytes((index.document_indices[1:] + offset).tobytes())
        del index  # unmap before copying the tokens
        with open(bin_path, "rb") as f:
            shutil.copyfileobj(f, self.data_file, _COPY_BLOCK)

    def finalize(self, idx_path: str) -> None:
        """Close the ``.bin`` and write the ``.idx``."""
        self.data_file.close()
        write_index(idx_path, self.dtype, self.sequence_lengths, self.document_indices)

    def close(self) -> None:
        """Close the ``.bin`` without writing an index (an aborted build; the caller removes the files)."""
        self.data_file.close()

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.data_file.close()
