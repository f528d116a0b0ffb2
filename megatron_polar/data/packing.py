"""Bin-pack pairs into fixed-length rows for the packed training layout (vectorised numpy).

Why packing lives on the training side: a built dataset stores one document per pair and knows nothing
about row length. Packing at training time lets one build serve any ``seq_length`` (and the padded
layout, which does not pack at all), and lets the packer see the epoch's shuffled order, so rows differ
between epochs and seeds instead of being frozen into the files.

The unit is the pair: the chosen and the rejected sequence of a pair always land in the same row, which
the Bradley-Terry loss needs (and the released trainer does the same).

Algorithm (per window of ``window`` pairs of the given, already shuffled, order): sort the window's
pairs by length, largest first; open as many rows as the window's tokens need at full efficiency, one
per largest pair; then, round after round, every open row takes the largest remaining pair that still
fits it. One round is a handful of array operations for all rows at once: rows sorted by free space
(roomiest first) each want the first pair no longer than their room; when several want the same one,
the next row takes the next free pair, which is ``a_r = max(want_r, a_{r-1} + 1)``, i.e.
``a = r + cummax(want - r)``. A row that gets nothing is closed (no remaining pair fits it, now or
later). Pairs left over when every row is closed are packed the same way into new rows. With many short
pairs to top rows off this reaches ~99.9% real tokens on the paper's mix at 32k rows, like a per-pair
best-fit-decreasing loop, at a fraction of a microsecond per pair instead of ~1.3 µs of Python.

Results are a pure function of the input (stable sorts only).
"""

from __future__ import annotations

import numpy as np

DEFAULT_WINDOW = 65536
_UINT16_MAX = 65535


def split_oversize(pair_tokens: np.ndarray, row_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of pairs that fit in a row (``kept``) and of those that do not (``dropped``)."""
    pair_tokens = np.asarray(pair_tokens)
    fits = pair_tokens <= row_length
    return np.flatnonzero(fits), np.flatnonzero(~fits)


def _check(sizes: np.ndarray, row_length: int, window: int) -> None:
    if sizes.ndim != 1:
        raise ValueError(f"pair_tokens must be 1-D, got shape {sizes.shape}")
    if window < 1 or row_length < 1:
        raise ValueError("row_length and window must be >= 1")
    if sizes.size and sizes.max() > row_length:
        raise ValueError(
            f"{int((sizes > row_length).sum())} pairs are longer than row_length={row_length} "
            f"(longest {int(sizes.max())}); drop them first with split_oversize()"
        )
    if sizes.size and sizes.min() < 1:
        raise ValueError("pair lengths must be >= 1")


def _argsort(keys: np.ndarray, bound: int) -> np.ndarray:
    """Stable ascending argsort; keys in ``[0, bound]`` use 16-bit radix sort when they fit."""
    if bound <= _UINT16_MAX:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")


def _fill_rows(desc: np.ndarray, row_length: int, batch_fraction: float = 0.5) -> np.ndarray:
    """Row number of every item of ``desc`` (sizes sorted largest first); rows numbered from 0."""
    n = desc.size
    row_of = np.full(n, -1, dtype=np.int64)
    pending = np.arange(n)  # positions in ``desc`` not yet placed, still largest first
    first_row = 0
    while pending.size:
        sizes = desc[pending]
        n_rows = max(1, -(-int(sizes.sum()) // row_length))
        # The largest pairs open the rows: they are the hardest to place later.
        row_of[pending[:n_rows]] = first_row + np.arange(n_rows)
        room = row_length - sizes[:n_rows]
        queue, head = pending[n_rows:].copy(), 0  # still largest first; queue[head:] is pending
        leftover = [np.zeros(0, dtype=np.int64)]
        batch = max(1, int(n_rows * batch_fraction))
        while head < queue.size:
            # The next largest pairs, smallest first, each take the tightest row that still fits them.
            stop = min(head + batch, queue.size)
            take = queue[head:stop][::-1]
            wanted = desc[take]
            by_room = _argsort(room, row_length)
            want = np.searchsorted(room[by_room], wanted, side="left")
            k = np.arange(take.size)
            got = k + np.maximum.accumulate(want - k)
            placed = got < n_rows
            rows = by_room[got[placed]]
            row_of[take[placed]] = first_row + rows
            room[rows] -= wanted[placed]
            # A pair no row can hold now never fits this level (rooms only shrink): pack it later.
            hopeless = want >= n_rows
            leftover.append(take[hopeless])
            # Pairs that lost a row to a smaller one of the batch go back to the front of the queue.
            retry = take[~(placed | hopeless)][::-1]
            head = stop - retry.size
            queue[head:stop] = retry
        pending = np.sort(np.concatenate(leftover))  # positions in `desc`: largest first again
        first_row += n_rows
    return row_of


def pack_flat(
    pair_tokens: np.ndarray, row_length: int, window: int = DEFAULT_WINDOW
) -> tuple[np.ndarray, np.ndarray]:
    """Pack pairs into rows of at most ``row_length`` tokens, as flat arrays.

    Args:
        pair_tokens: ``pair_tokens[i]`` = chosen length + rejected length of pair ``i``, in the
            (already shuffled) order the pairs should be consumed.
        row_length: tokens per row.
        window: pairs packed together (rows never mix pairs of two windows).

    Returns:
        ``(row_offsets, members)``: row ``r`` holds pairs ``members[row_offsets[r]:row_offsets[r + 1]]``
        (ascending within a row); rows are ordered by window, then by when they were opened.

    Raises:
        ValueError: if a pair is longer than ``row_length`` (see :func:`split_oversize`), or a length is < 1.
    """
    sizes = np.asarray(pair_tokens)
    _check(sizes, row_length, window)
    offsets_parts, members_parts, row_base, member_base = [np.zeros(1, np.int64)], [], 0, 0
    for start in range(0, sizes.size, window):
        chunk = sizes[start : start + window].astype(np.int64)
        order = _argsort(row_length - chunk, row_length)
        row_of_sorted = _fill_rows(chunk[order], row_length)
        row_of = np.empty_like(row_of_sorted)
        row_of[order] = row_of_sorted
        n_rows = int(row_of.max()) + 1
        members = _argsort(row_of, n_rows - 1)  # grouped by row, ascending index within a row
        counts = np.bincount(row_of, minlength=n_rows)
        offsets_parts.append(member_base + np.cumsum(counts))
        members_parts.append(members + start)
        row_base += counts.size
        member_base += members.size
    offsets = np.concatenate(offsets_parts)
    members = np.concatenate(members_parts) if members_parts else np.zeros(0, np.int64)
    return offsets, members


def pack_pairs(pair_tokens: np.ndarray, row_length: int, window: int = DEFAULT_WINDOW) -> list[np.ndarray]:
    """:func:`pack_flat` as a list of rows (int64 arrays of pair indices, ascending within a row)."""
    offsets, members = pack_flat(pair_tokens, row_length, window)
    return [members[offsets[r] : offsets[r + 1]] for r in range(offsets.size - 1)]


def packing_efficiency(pair_tokens: np.ndarray, rows: list[np.ndarray], row_length: int) -> float:
    """Real tokens / (rows * row_length): the share of a packed batch that is not padding."""
    if not rows:
        return 0.0
    sizes = np.asarray(pair_tokens, dtype=np.int64)
    used = int(sum(int(sizes[r].sum()) for r in rows))
    return used / (len(rows) * row_length)
