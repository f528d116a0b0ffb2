"""Bin-pack pairs into fixed-length rows for the packed training layout (pure numpy + bisect).

Why packing lives on the training side: a built dataset stores one document per pair and knows nothing
about row length. Packing at training time lets one build serve any ``seq_length`` (and the padded
layout, which does not pack at all), and lets the packer see the epoch's shuffled order, so rows differ
between epochs and seeds instead of being frozen into the files.

The unit is the pair: the chosen and the rejected sequence of a pair always land in the same row, which
the Bradley-Terry loss needs (and the released trainer does the same). The packer is best-fit-decreasing
within windows of ``window`` pairs of the given (already shuffled) order; rows left with room after a
window stay open for the next window, up to ``window`` of them, so the tail of each window does not waste
space. Results are deterministic for a given input.
"""

from __future__ import annotations

from bisect import bisect_left, insort

import numpy as np

_ID_BITS = 32  # open rows are kept as sorted ints: (free_tokens << 32) | row_id
_ID_MASK = (1 << _ID_BITS) - 1


def split_oversize(pair_tokens: np.ndarray, row_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of pairs that fit in a row (``kept``) and of those that do not (``dropped``)."""
    pair_tokens = np.asarray(pair_tokens)
    fits = pair_tokens <= row_length
    return np.flatnonzero(fits), np.flatnonzero(~fits)


def pack_pairs(pair_tokens: np.ndarray, row_length: int, window: int = 2048) -> list[np.ndarray]:
    """Pack pairs into rows of at most ``row_length`` tokens.

    Args:
        pair_tokens: ``pair_tokens[i]`` = chosen length + rejected length of pair ``i``, in the
            (already shuffled) order the pairs should be consumed.
        row_length: tokens per row.
        window: pairs sorted together by the best-fit-decreasing pass.

    Returns:
        Rows as int64 arrays of pair indices (ascending within a row), ordered by when the row was opened.

    Raises:
        ValueError: if a pair is longer than ``row_length`` (see :func:`split_oversize`), or a length is < 1.
    """
    sizes = np.asarray(pair_tokens, dtype=np.int64)
    if sizes.ndim != 1:
        raise ValueError(f"pair_tokens must be 1-D, got shape {sizes.shape}")
    if window < 1 or row_length < 1:
        raise ValueError("row_length and window must be >= 1")
    if sizes.size == 0:
        return []
    if sizes.max() > row_length:
        raise ValueError(
            f"{int((sizes > row_length).sum())} pairs are longer than row_length={row_length} "
            f"(longest {int(sizes.max())}); drop them first with split_oversize()"
        )
    if sizes.min() < 1:
        raise ValueError("pair lengths must be >= 1")

    rows: list[list[int]] = []
    open_keys: list[int] = []  # sorted (free << 32) | row_id of rows that still have room
    for start in range(0, sizes.size, window):
        chunk = sizes[start : start + window]
        order = np.argsort(-chunk, kind="stable")
        for i, size in zip((order + start).tolist(), chunk[order].tolist()):
            pos = bisect_left(open_keys, size << _ID_BITS)
            if pos < len(open_keys):
                key = open_keys.pop(pos)
                row_id, free = key & _ID_MASK, key >> _ID_BITS
            else:
                row_id, free = len(rows), row_length
                rows.append([])
            rows[row_id].append(i)
            free -= size
            if free > 0:
                insort(open_keys, (free << _ID_BITS) | row_id)
        if len(open_keys) > window:
            # Keep the roomiest rows open; the rest are as good as closed.
            open_keys = open_keys[-window:]
    return [np.sort(np.asarray(r, dtype=np.int64)) for r in rows]


def packing_efficiency(pair_tokens: np.ndarray, rows: list[np.ndarray], row_length: int) -> float:
    """Real tokens / (rows * row_length): the share of a packed batch that is not padding."""
    if not rows:
        return 0.0
    sizes = np.asarray(pair_tokens, dtype=np.int64)
    used = int(sum(int(sizes[r].sum()) for r in rows))
    return used / (len(rows) * row_length)
