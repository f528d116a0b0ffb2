"""One epoch's order of samples as two flat arrays: which pairs, grouped into which rows.

``pair_ids[row_offsets[s]:row_offsets[s + 1]]`` are the global pair ids (see
:func:`megatron_polar.data.sampler.pair_offsets`) of sample ``s``: a packed row, or one pair in the
padded layout (which stores no offsets). The arrays are computed by :func:`compute_epoch_plan` (on one
rank, once) and read by :class:`EpochPlan`, usually memory-mapped from a
:class:`~megatron_polar.data.plan_store.PlanStore`.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from megatron_polar.data.packing import pack_flat
from megatron_polar.data.plan_store import PlanWriter, StoredPlan

_UINT32_LIMIT = 1 << 32
# Epochs smaller than this are packed in one process: starting the pool would cost more than it saves.
PARALLEL_MIN_PAIRS = 1 << 20
_SCAN_CHUNK = 1 << 20  # pairs per step of sequential scans (bounded temporaries)


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


@dataclass
class _EpochInputs:
    """What every window of one epoch reads: the compacted order and the pool's per-pair arrays."""

    order: np.ndarray
    lengths: np.ndarray
    prefix: np.ndarray | None  # shared-prefix lengths when pairs are sized by their footprint
    source: np.ndarray
    index: np.ndarray
    id_offsets: np.ndarray
    id_dtype: np.dtype
    layout: str
    seq_length: int
    seed: int
    epoch: int
    window: int
    shuffle: bool


# Set in the parent just before it forks the packing processes: they inherit it (copy-on-write, read
# only, so no page is copied) instead of receiving the pool through a pipe.
_FORKED: _EpochInputs | None = None


def _pack_window(inp: _EpochInputs, w: int) -> tuple[np.ndarray, np.ndarray | None, int, float]:
    """Window ``w`` of the epoch: ``(pair_ids, row_offsets within it or None, real_tokens, cpu_s)``.

    A pure function of the inputs and ``w`` (its own seeded row shuffle), so windows can run in any
    process and in any order and the plan comes out the same.
    """
    c0 = time.process_time()
    lo = w * inp.window
    part = inp.order[lo : lo + inp.window]
    lengths = inp.lengths[part].astype(np.int64)
    total = lengths[:, 0] + lengths[:, 1]
    if inp.prefix is not None:  # a shared-prefix pair is one segment group of its footprint
        total = pair_footprints(lengths[:, 0], lengths[:, 1], inp.prefix[part].astype(np.int64))
    real_tokens = int(total.sum())
    offsets = None
    if inp.layout == "packed":
        offsets, members = pack_flat(total, inp.seq_length, window=part.size)
        if inp.shuffle:
            perm = np.random.default_rng([inp.seed, 17, inp.epoch, w]).permutation(offsets.size - 1)
            offsets, members = _permute_rows(offsets, members, perm)
        part = part[members]
        offsets = offsets[1:]
    ids = (inp.id_offsets[inp.source[part]] + inp.index[part]).astype(inp.id_dtype)
    return ids, offsets, real_tokens, time.process_time() - c0


def _pack_forked(w: int) -> tuple[np.ndarray, np.ndarray | None, int, float]:
    return _pack_window(_FORKED, w)


def _windows(inp: _EpochInputs, n_windows: int, workers: int) -> Iterator[tuple]:
    """Results of every window, in window order; ``workers`` > 1 packs them in forked processes.

    Fork, not spawn: the workers only run numpy on inherited arrays (no threads, locks or torch in
    them), and spawn would re-import the trainer's main module (torch, megatron) in each worker and
    send it the pool. At most ``2 * workers`` windows are in flight, so finished windows never pile up.
    """
    global _FORKED
    parallel = workers > 1 and n_windows > 1 and inp.order.size >= PARALLEL_MIN_PAIRS
    if not parallel or "fork" not in mp.get_all_start_methods():
        for w in range(n_windows):
            yield _pack_window(inp, w)
        return
    _FORKED = inp
    try:
        with ProcessPoolExecutor(min(workers, n_windows), mp_context=mp.get_context("fork")) as pool:
            pending: deque = deque()
            for w in range(n_windows):
                pending.append(pool.submit(_pack_forked, w))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        _FORKED = None


def compute_epoch_plan(
    pool,
    layout: str,
    seq_length: int,
    seed: int,
    epoch: int,
    window: int,
    shuffle: bool,
    id_offsets: np.ndarray,
    *,
    workers: int = 1,
    sink: PlanWriter | None = None,
    share_prefix: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """Shuffle, drop what does not fit, pack (packed layout) and shuffle the rows of one epoch.

    Works window by window after the shuffle, so besides the pool the writer holds one permutation of
    the epoch (4 bytes a pair below 4G pairs) and per-window temporaries; with a ``sink`` the pair ids
    go to disk window by window instead of into an array of the epoch's size. Rows are shuffled within
    their window: the windows are random draws of the epoch already (the shuffle comes first), and
    without it each window's long pairs would come early and its short ones late (packing opens rows
    largest pairs first). Windows are independent, so ``workers`` processes pack them; the result
    does not depend on ``workers``.

    Args:
        pool: the drawn :class:`~megatron_polar.data.sampler.PairPool`.
        id_offsets: :func:`~megatron_polar.data.sampler.pair_offsets` of the pool's datasets.
        workers: processes packing windows (1: this process only).
        sink: a :class:`~megatron_polar.data.plan_store.PlanWriter` to stream ``pair_ids`` into.
        share_prefix: size every pair by its shared-prefix footprint ``chosen + rejected - prefix``
            (one row segment group, any layout) instead of its two sequences; needs ``pool.prefix``.

    Returns:
        ``(arrays, meta)`` for :class:`~megatron_polar.data.plan_store.PlanStore`: ``pair_ids`` (unless
        streamed into ``sink``) and ``row_offsets`` when packed; meta counts ``samples``, ``pairs``,
        ``dropped`` and ``real_tokens``, and ``build`` says how long it took with how many workers.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    n = len(pool)
    # The same permutation as ``rng.permutation(n)`` (which shuffles an int64 arange with the same
    # draws), in half the memory.
    order = np.arange(n, dtype=_index_dtype(n))
    if shuffle:
        np.random.default_rng([seed, 13, epoch]).shuffle(order)
    lengths = pool.lengths
    prefix = pool.prefix if share_prefix else None
    # What fits a row, in pool order: a sequential scan, where testing in shuffled order would be a
    # random gather of every pair's lengths (the slowest step of the serial part). Usually nothing is
    # dropped (builds cap pairs below a row) and the order is left as it is.
    keep = np.empty(n, dtype=bool)
    for lo in range(0, n, _SCAN_CHUNK):
        pair = lengths[lo : lo + _SCAN_CHUNK].astype(np.int64)
        if prefix is not None:  # padded or packed, a shared pair is one group of its footprint
            size = pair_footprints(pair[:, 0], pair[:, 1], prefix[lo : lo + _SCAN_CHUNK].astype(np.int64))
        else:
            size = pair.max(axis=1) if layout == "padded" else pair.sum(axis=1)
        keep[lo : lo + _SCAN_CHUNK] = size <= seq_length
    if not keep.all():
        order = _compact(order, keep.__getitem__, window)
    del keep
    id_dtype = _index_dtype(int(id_offsets[-1]))
    inp = _EpochInputs(
        order, lengths, prefix, pool.source, pool.index, np.asarray(id_offsets, dtype=np.int64), id_dtype,
        layout, seq_length, seed, epoch, window, shuffle,
    )  # fmt: skip
    if sink is not None:
        ids_out, pair_ids = sink.stream("pair_ids", id_dtype, order.size), None
    else:
        pair_ids = np.empty(order.size, dtype=id_dtype)
    offsets_parts, rows, real_tokens, pack_cpu, lo = [np.zeros(1, dtype=np.int64)], 0, 0, 0.0, 0
    n_windows = -(-order.size // window)
    for ids, offsets, tokens, cpu in _windows(inp, n_windows, workers):
        if pair_ids is None:
            ids_out.append(ids)
        else:
            pair_ids[lo : lo + ids.size] = ids
        if offsets is not None:
            offsets_parts.append(lo + offsets)
            rows += offsets.size
        real_tokens += tokens
        pack_cpu += cpu
        lo += ids.size
    arrays = {} if pair_ids is None else {"pair_ids": pair_ids}
    if layout == "packed":
        arrays["row_offsets"] = np.concatenate(offsets_parts).astype(_index_dtype(order.size + 1))
    samples = rows if layout == "packed" else order.size
    meta = {
        "samples": int(samples),
        "pairs": int(order.size),
        "dropped": int(n - order.size),
        "real_tokens": real_tokens,
        "layout": layout,
        "seq_length": seq_length,
        "share_prefix": share_prefix,
        "build": {
            "workers": workers if n_windows > 1 and order.size >= PARALLEL_MIN_PAIRS else 1,
            "windows": n_windows,
            "seconds": round(time.perf_counter() - t0, 3),
            "main_cpu_s": round(time.process_time() - c0, 3),
            "window_cpu_s": round(pack_cpu, 3),
        },
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
