"""One epoch's order of samples as two flat arrays: which pairs, grouped into which rows.

``pair_ids[row_offsets[s]:row_offsets[s + 1]]`` are the global pair ids (see
:func:`megatron_polar.data.dataset.pair_offsets`) of sample ``s``: a packed row, or one pair in the
padded layout (which stores no offsets). The arrays are computed by :func:`compute_epoch_plan` (on one
rank, once) and read by :class:`EpochPlan`, usually memory-mapped from a
:class:`~megatron_polar.data.plan_store.PlanStore`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from megatron_polar.data.packing import pack_flat
from megatron_polar.data.plan_store import StoredPlan

_UINT32_LIMIT = 1 << 32


def pair_footprints(chosen: np.ndarray, rejected: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Row tokens of shared-prefix pairs, ``chosen + rejected - prefix``, in the inputs' dtype.

    :func:`megatron_polar.data.batching.shared_footprint` is the same formula, checked and widened to
    int64; on the plan writer at 351M pairs that is ~11 GB of temporaries instead of one int32 array.
    """
    return chosen + rejected - prefix


def _index_dtype(limit: int) -> np.dtype:
    """Smallest of uint32/int64 that holds values below ``limit``: the plan is 4 bytes a pair up to 4G pairs."""
    return np.dtype(np.uint32) if limit < _UINT32_LIMIT else np.dtype(np.int64)


def _permute_rows(
    offsets: np.ndarray, members: np.ndarray, perm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows in the order ``perm`` (flat arrays in, flat arrays out; no per-row Python objects)."""
    counts = np.diff(offsets)[perm]
    new_offsets = np.zeros(perm.size + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    shift = np.repeat(offsets[:-1][perm] - new_offsets[:-1], counts)
    return new_offsets, members[np.arange(members.size, dtype=np.int64) + shift]


def _compact(order: np.ndarray, keep: Callable[[np.ndarray], np.ndarray], chunk: int) -> np.ndarray:
    """``order[keep(order)]`` computed in place, chunk by chunk (no second array of the epoch's size)."""
    w = 0
    for lo in range(0, order.size, chunk):
        part = order[lo : lo + chunk]
        kept = part[keep(part)]
        order[w : w + kept.size] = kept
        w += kept.size
    return order[:w]


def compute_epoch_plan(
    pool,
    layout: str,
    seq_length: int,
    seed: int,
    epoch: int,
    window: int,
    shuffle: bool,
    id_offsets: np.ndarray,
    share_prefix: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """Shuffle, drop what does not fit, pack (packed layout) and shuffle the rows of one epoch.

    Works window by window after the shuffle, so besides the pool and the output the writer holds
    one permutation of the epoch (8 bytes a pair) and per-window temporaries. Rows are shuffled within
    their window: the windows are random draws of the epoch already (the shuffle comes first), and
    without it each window's long pairs would come early and its short ones late (packing opens rows
    largest pairs first).

    Args:
        pool: the drawn :class:`~megatron_polar.data.dataset.PairPool`.
        id_offsets: :func:`~megatron_polar.data.dataset.pair_offsets` of the pool's datasets.
        share_prefix: size every pair by its shared-prefix footprint ``chosen + rejected - prefix``
            (one row segment group, any layout) instead of its two sequences; needs ``pool.prefix``.

    Returns:
        ``(arrays, meta)`` for :class:`~megatron_polar.data.plan_store.PlanStore`: ``pair_ids`` (and
        ``row_offsets`` when packed); meta counts ``samples``, ``pairs``, ``dropped`` and ``real_tokens``.
    """
    n = len(pool)
    order = np.random.default_rng([seed, 13, epoch]).permutation(n) if shuffle else np.arange(n)

    # 1-D per-pair figures first: gathers and sums over [n, 2] rows are several times slower.
    first, second = pool.lengths[:, 0], pool.lengths[:, 1]
    if share_prefix:  # a pair is one segment group in one row, padded or packed
        total = size = pair_footprints(first, second, pool.prefix)
    else:
        total = first + second
        size = np.maximum(first, second) if layout == "padded" else total

    order = _compact(order, lambda part: size[part] <= seq_length, window)
    id_dtype = _index_dtype(int(id_offsets[-1]))
    pair_ids = np.empty(order.size, dtype=id_dtype)
    offsets_parts, rows, real_tokens = [np.zeros(1, dtype=np.int64)], 0, 0
    for w, lo in enumerate(range(0, order.size, window)):
        part = order[lo : lo + window]
        real_tokens += int(total[part].sum(dtype=np.int64))
        if layout == "packed":
            offsets, members = pack_flat(size[part], seq_length, window=part.size)
            if shuffle:
                perm = np.random.default_rng([seed, 17, epoch, w]).permutation(offsets.size - 1)
                offsets, members = _permute_rows(offsets, members, perm)
            part = part[members]
            offsets_parts.append(lo + offsets[1:])
            rows += offsets.size - 1
        pair_ids[lo : lo + part.size] = id_offsets[pool.source[part]] + pool.index[part]
    arrays = {"pair_ids": pair_ids}
    if layout == "packed":
        arrays["row_offsets"] = np.concatenate(offsets_parts).astype(_index_dtype(pair_ids.size + 1))
    samples = rows if layout == "packed" else pair_ids.size
    meta = {
        "samples": int(samples),
        "pairs": int(pair_ids.size),
        "dropped": int(n - pair_ids.size),
        "real_tokens": real_tokens,
        "layout": layout,
        "seq_length": seq_length,
        "share_prefix": share_prefix,
    }
    return arrays, meta


class EpochPlan:
    """Read side of a plan: samples of one epoch, addressable by number."""

    def __init__(self, stored: StoredPlan):
        self.pair_ids = stored.arrays["pair_ids"]
        self.row_offsets = stored.arrays.get("row_offsets")
        meta = stored.meta
        self.layout, self.seq_length = meta["layout"], meta["seq_length"]
        self.samples, self.pairs = meta["samples"], meta["pairs"]
        self.dropped, self.real_tokens = meta["dropped"], meta["real_tokens"]
        self.share_prefix = bool(meta.get("share_prefix", False))

    def __len__(self) -> int:
        return self.samples

    def sample_pairs(self, sample: int) -> np.ndarray:
        """Global pair ids in ``sample`` (one pair, or a packed row)."""
        if self.row_offsets is None:
            return np.asarray(self.pair_ids[sample : sample + 1], dtype=np.int64)
        lo, hi = int(self.row_offsets[sample]), int(self.row_offsets[sample + 1])
        return np.asarray(self.pair_ids[lo:hi], dtype=np.int64)

    @property
    def efficiency(self) -> float:
        """Real tokens over the tokens of all rows (padding included)."""
        rows = len(self) * (2 if self.layout == "padded" and not self.share_prefix else 1)
        return self.real_tokens / max(1, rows * self.seq_length)
