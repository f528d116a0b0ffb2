"""How placed rows attend: the one causal mask, and the segment table turned into a mask or THD params.

Every collator (``data/batching.py:place_rows``) describes its rows with one *segment table*. The rows
lie end to end as a flat token stream (``row * seq_length + column``); a query segment is a run of that
stream, and its keys are a run of the *gathered* key stream ``kv_index`` (flat token indices)::

    segment = (q_start, q_end, kv_start, kv_end)     queries stream[q_start:q_end]
                                                      keys    stream[kv_index[kv_start:kv_end]]

Query ``i`` of ``lq`` sees key ``j`` of ``lk`` iff ``j <= i + lk - lq`` (causal, bottom-right aligned:
the last query sees every key). A packed sequence, a padded row and a prefix are segments whose keys are
their own queries; a shared-prefix suffix's keys are its prefix followed by itself.

From the table:

* :func:`segments_to_mask`: the boolean ``[rows, 1, s, s]`` mask of the local spec (True = masked).
  Rows that are one segment from column 0 (the padded layout) skip it: a broadcast view of
  :func:`causal_mask` serves them, with no per-row ``s x s`` memory.
* :func:`segments_to_thd`: ``PackedSeqParams`` with equal query and key ``cu_seqlens`` when every
  segment attends to itself, or :class:`~megatron_polar.data.batch.SharedPrefixParams` for shared rows.

:func:`causal_mask` is the project's one causal-mask builder (collators, scorer and the local varlen
attention of ``model/shared_prefix_attention.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from megatron.core.packed_seq_params import PackedSeqParams
from torch import Tensor

from megatron_polar.data.batch import SharedPrefixParams

_GROW = 256  # cached host tensors grow in steps of this many tokens
_host: dict[str, Tensor] = {}


def _grown(n: int) -> int:
    return -(-n // _GROW) * _GROW


def causal_mask(q_len: int, kv_len: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``[q_len, kv_len]``, True = masked: query ``i`` sees key ``j`` iff ``j <= i + kv_len - q_len``.

    ``kv_len`` defaults to ``q_len`` (the square causal mask). The block is the last ``q_len`` rows of the
    ``kv_len x kv_len`` causal mask, and that one is the top-left corner of any larger one, so on the host
    every call returns a read-only view of one cached mask, grown to the longest length met (in steps of
    256): a server or a data loader meets the same few lengths again. On another device the block is built
    per call, because a cached copy would hold ``s**2`` bytes of accelerator memory for the whole run.
    """
    kv_len = q_len if kv_len is None else kv_len
    if not 0 < q_len <= kv_len:
        raise ValueError(f"causal_mask needs 0 < q_len <= kv_len, got q_len={q_len}, kv_len={kv_len}")
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type != "cpu":
        cols = torch.arange(kv_len, device=device)
        rows = torch.arange(q_len, device=device).unsqueeze(1)
        return cols > rows + (kv_len - q_len)
    mask = _host.get("mask")
    if mask is None or mask.shape[0] < kv_len:
        n = _grown(kv_len)
        mask = _host["mask"] = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return mask[kv_len - q_len : kv_len, :kv_len]


def positions_from_zero(seq_length: int) -> Tensor:
    """``[[0, 1, ..., s-1]]`` int64, a view of one cached ``arange`` (grown like :func:`causal_mask`)."""
    pos = _host.get("positions")
    if pos is None or pos.shape[0] < seq_length:
        pos = _host["positions"] = torch.arange(_grown(seq_length))
    return pos[:seq_length].view(1, seq_length)


def segments_to_mask(segments: np.ndarray, kv_index: np.ndarray, rows: int, seq_length: int) -> Tensor:
    """The local spec's boolean ``[rows, 1, s, s]`` mask (True = masked) of a segment table.

    Every token is masked from every other except where a segment lets its queries see its keys; keys
    must lie in the query's row (a dense per-row mask cannot say more). Each segment's block is a slice
    of :func:`causal_mask`. (Rows that are one whole-row segment need no dense mask at all:
    ``data/batching.py:Placement.attention_mask`` returns ``causal_mask(s)`` broadcast for them.)
    """
    seg = np.asarray(segments, dtype=np.int64).reshape(-1, 4)
    kv_index = np.asarray(kv_index, dtype=np.int64)
    s = seq_length
    mask = torch.ones(rows, 1, s, s, dtype=torch.bool)
    dense = mask.numpy()
    for q0, q1, k0, k1 in seg.tolist():
        r, base = q0 // s, (q0 // s) * s
        keys = kv_index[k0:k1]
        if q1 > base + s or keys.min() < base or keys.max() >= base + s:
            raise ValueError(f"segment {(q0, q1, k0, k1)} leaves row {r} of {s} tokens")
        block = causal_mask(q1 - q0, k1 - k0).numpy()
        # keys in contiguous runs (a prefix, then the segment itself) become column slices of the row
        cuts = [0, *(np.flatnonzero(np.diff(keys) != 1) + 1).tolist(), len(keys)]
        for u, v in zip(cuts[:-1], cuts[1:]):
            a = int(keys[u]) - base
            dense[r, 0, q0 - base : q1 - base, a : a + v - u] = block[:, u:v]
    return mask


def segments_to_thd(
    segments: np.ndarray, kv_index: np.ndarray, positions: Tensor | None = None, shared: bool = False
) -> PackedSeqParams:
    """THD params of a segment table over the ``[1, t]`` stream.

    Without ``shared`` every segment must attend to itself: ``PackedSeqParams`` whose ``cu_seqlens_q``
    and ``cu_seqlens_kv`` are one tensor. With ``shared``, :class:`SharedPrefixParams` with the gathered
    keys ``kv_index``, the per-token ``positions`` ``[t]`` and the table as host integers.
    """
    seg = np.asarray(segments, dtype=np.int64).reshape(-1, 4)
    cu_q = torch.from_numpy(np.concatenate([[0], seg[:, 1]]).astype(np.int32))
    max_q = int((seg[:, 1] - seg[:, 0]).max())
    if not shared:
        if not (
            np.array_equal(seg[:, 2:], seg[:, :2]) and np.array_equal(kv_index, np.arange(len(kv_index)))
        ):
            raise ValueError("segments whose keys are not their own queries need shared=True")
        return PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu_q, cu_seqlens_kv=cu_q, max_seqlen_q=max_q, max_seqlen_kv=max_q
        )
    if positions is None:
        raise ValueError("shared-prefix THD params need the per-token positions")
    return SharedPrefixParams(
        qkv_format="thd",
        cu_seqlens_q=cu_q,
        cu_seqlens_kv=torch.from_numpy(np.concatenate([[0], seg[:, 3]]).astype(np.int32)),
        max_seqlen_q=max_q,
        max_seqlen_kv=int((seg[:, 3] - seg[:, 2]).max()),
        kv_index=torch.from_numpy(np.ascontiguousarray(kv_index, dtype=np.int64)),
        positions=positions,
        segments=tuple(map(tuple, seg.tolist())),
    )
