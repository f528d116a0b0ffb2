"""Turn token sequences into :class:`RewardBatch` micro-batches: one placement, four layouts.

A *pair* is ``(chosen_ids, rejected_ids)``; each sequence ends with the reward token, whose hidden state
is scored. Rows are always ``seq_length`` long so pipeline stages exchange fixed-shape activations.

Every layout is rows of *groups* ``(p, members)``: the members' common first ``p`` tokens placed once,
then each member's suffix, every suffix attending to the prefix and itself. :func:`place_rows` is the one
routine that lays such rows out: tokens, position ids, reward positions, token counts and the segment
table of ``data/segments.py`` (which turns it into the local spec's mask or THD params).

* padded (:func:`collate_padded`, and the scorer's ``collate_sequences``): one group ``(0, [seq])`` per
  row, its padding tail attending causally like the rest of the row (one whole-row segment), so the
  mask is a broadcast view of one causal mask and the positions a view of one ``arange``.
* packed (:func:`collate_packed`): whole pairs packed into rows, each sequence a group ``(0, [seq])``;
  a block-diagonal causal mask (local spec) or THD ``cu_seqlens`` (Transformer Engine) keeps sequences
  from attending to each other, and position ids restart at every sequence. A row's padding tail is its
  own segment.
* shared (:func:`collate_shared`, :func:`collate_prefix_groups`): each pair one group ``(p, [chosen,
  rejected])`` with ``p`` the prefix the two share, computed once (the scorer groups any number of
  candidates the same way); :class:`~megatron_polar.data.batch.SharedPrefixParams`, no ``s x s`` mask
  (docs/shared_prefix_attention.md draws the layout).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch
from torch import Tensor

from megatron_polar.data.batch import RewardBatch
from megatron_polar.data.pair_dataset import shared_prefix_length
from megatron_polar.data.segments import causal_mask, positions_from_zero, segments_to_mask, segments_to_thd

Pair = tuple[Sequence[int], Sequence[int]]
Group = tuple[int, Sequence[Sequence[int]]]  # (prefix length, members)


@dataclass
class Placement:
    """Rows of placed groups, and the segment table that says what each token attends to.

    ``segments`` rows are ``(q_start, q_end, kv_start, kv_end)`` over the flat stream and the gathered key
    stream ``kv_index`` (see ``data/segments.py``); they tile the stream in order. Both are derived on
    first use from ``table`` (``q_start, q_end, prefix_start, prefix_end, first position`` per segment),
    so the padded layout, which needs neither, does not pay for them.
    """

    tokens: Tensor  # [rows, s] int64
    seq_length: int
    table: list[tuple[int, int, int, int, int]]
    reward_index: Tensor  # [members] int64: flat index of each member's last token, in row order
    num_real_tokens: int
    sum_sq_lengths: int
    one_segment_per_row: bool  # every row one segment from column 0 to its end, positions from 0

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    @functools.cached_property
    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        table = np.asarray(self.table, dtype=np.int64).reshape(-1, 5)
        q_len, ctx_len = table[:, 1] - table[:, 0], table[:, 3] - table[:, 2]
        # each segment's keys: its prefix (if any), then its own queries
        kv_index = _ranges(table[:, [2, 0]].ravel(), np.stack([ctx_len, q_len], axis=1).ravel())
        kv_end = np.cumsum(ctx_len + q_len)
        segments = np.stack([table[:, 0], table[:, 1], kv_end - ctx_len - q_len, kv_end], axis=1)
        return segments, kv_index, table[:, 4]

    @property
    def segments(self) -> np.ndarray:
        """``[n, 4]`` int64 ``(q_start, q_end, kv_start, kv_end)``."""
        return self._arrays[0]

    @property
    def kv_index(self) -> np.ndarray:
        """``[t_kv]`` int64: the flat token index of each gathered key."""
        return self._arrays[1]

    def position_ids(self) -> Tensor:
        """``[rows, s]`` int64; a broadcast view of one ``arange`` when each row is one segment from 0."""
        s = self.seq_length
        if self.one_segment_per_row:
            return positions_from_zero(s).expand(self.rows, -1)
        segments, _, first = self._arrays
        flat = np.repeat(first - segments[:, 0], segments[:, 1] - segments[:, 0]) + np.arange(self.rows * s)
        return torch.from_numpy(flat.reshape(self.rows, s))

    def attention_mask(self) -> Tensor:
        """The local spec's boolean ``[rows, 1, s, s]`` mask (True = masked); a broadcast view of one
        causal mask when each row is one segment from 0."""
        s = self.seq_length
        if self.one_segment_per_row:
            return causal_mask(s)[None, None].expand(self.rows, 1, s, s)
        return segments_to_mask(self.segments, self.kv_index, self.rows, s)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(a, a + n) for a, n in zip(starts, lengths))`` without a Python loop."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _bad_group(
    kind: str, unit: str, r: int, k: int, p: int, lengths: list[int], s: int, col: int
) -> NoReturn:
    """Raise the error for a group that is malformed or does not fit its row."""
    if p < 0 or not lengths or min(lengths) <= p:
        what = "an empty sequence" if p == 0 else f"the prefix of {p} leaves a member empty"
        raise ValueError(f"{kind} {r}, {unit} {k}: {what}")
    need = p + sum(lengths) - len(lengths) * p
    raise ValueError(
        f"{kind} {r} overflows data.seq_length={s}: {unit} {k} needs {need} tokens from column {col}"
    )


def place_rows(
    rows: Sequence[Sequence[Group]],
    seq_length: int,
    pad_id: int = 0,
    *,
    pad_tail: str = "own",
    kind: str = "row",
    unit: str = "group",
) -> Placement:
    """Lay out rows of groups ``(p, members)``: each group's first ``p`` tokens once, then each member's
    suffix (at least one token), position ids continuing from the prefix into every suffix.

    Segments: the prefix attends to itself, each suffix to ``[prefix; suffix]``. A row's unused tail is
    ``pad_id`` tokens; with ``pad_tail="own"`` it is a segment of its own (positions from 0), with
    ``"extend"`` it lengthens the row's last segment (positions continue; the padded layout). ``kind``
    and ``unit`` name a row and a group in errors. ``sum_sq_lengths`` counts a member of ``n`` tokens as
    ``n**2 - p**2`` and the prefix as ``p**2`` (twice the query-key pairs of causal attention).
    """
    if pad_tail not in ("own", "extend"):
        raise ValueError(f"pad_tail must be 'own' or 'extend', got {pad_tail!r}")
    s = seq_length
    buf = np.full(len(rows) * s, pad_id, dtype=np.int64)
    segs: list[tuple[int, int, int, int, int]] = []  # (q_start, q_end, ctx_start, ctx_end, first position)
    reward: list[int] = []
    real = sq = 0
    whole_rows, extend = True, pad_tail == "extend"
    for r, row in enumerate(rows):
        base = col = r * s
        first = len(segs)
        for k, (p, members) in enumerate(row):
            # one whole sequence (every padded and packed group): the common case, kept lean
            if p == 0 and len(members) == 1:
                seq = members[0]
                n = len(seq)
                if not 0 < n <= base + s - col:
                    _bad_group(kind, unit, r, k, 0, [n], s, col - base)
                buf[col : col + n] = seq
                segs.append((col, col + n, col, col, 0))
                col += n
                reward.append(col - 1)
                sq += n * n
                continue
            lengths = [len(m) for m in members]
            need = p + sum(lengths) - len(lengths) * p
            if p < 0 or not lengths or min(lengths) <= p or col + need > base + s:
                _bad_group(kind, unit, r, k, p, lengths, s, col - base)
            if p:
                buf[col : col + p] = members[0][:p]
                segs.append((col, col + p, col, col, 0))
            prefix, col = col, col + p
            for m, n in zip(members, lengths):
                buf[col : col + n - p] = m[p:] if p else m
                segs.append((col, col + n - p, prefix, prefix + p, p))
                col += n - p
                reward.append(col - 1)
                sq += n * n - p * p
            sq += p * p
        real += col - base
        end = base + s
        if col < end:
            if extend and len(segs) > first:
                q0, _, c0, c1, pos = segs[-1]
                segs[-1] = (q0, end, c0, c1, pos)
            else:  # the padding tail attends only to itself
                segs.append((col, end, col, col, 0))
        if whole_rows:
            whole_rows = len(segs) == first + 1 and segs[-1][0] == base
    return Placement(
        tokens=torch.from_numpy(buf.reshape(len(rows), s)),
        seq_length=s,
        table=segs,
        reward_index=torch.from_numpy(np.array(reward, dtype=np.int64)),
        num_real_tokens=real,
        sum_sq_lengths=sq,
        # a whole-row segment starts at position 0 and attends to itself (it has no prefix: p = 0)
        one_segment_per_row=whole_rows,
    )


def _check_lengths(seqs: Sequence[Sequence[int]], seq_length: int) -> None:
    for seq in seqs:
        if not 0 < len(seq) <= seq_length:
            raise ValueError(f"sequence of {len(seq)} tokens does not fit data.seq_length={seq_length}")


def collate_padded(
    pairs: Sequence[Pair], seq_length: int, pad_id: int = 0, explicit_mask: bool = True
) -> RewardBatch:
    """Two rows per pair, right-padded to ``seq_length``; rewards read at each sequence's last token."""
    seqs = [seq for pair in pairs for seq in pair]
    _check_lengths(seqs, seq_length)
    placed = place_rows([[(0, [seq])] for seq in seqs], seq_length, pad_id, pad_tail="extend")
    return RewardBatch(
        tokens=placed.tokens,
        position_ids=placed.position_ids().contiguous(),
        reward_index=placed.reward_index.view(-1, 2),
        attention_mask=placed.attention_mask() if explicit_mask else None,
        num_real_tokens=placed.num_real_tokens,
        sum_sq_lengths=placed.sum_sq_lengths,
    )


def collate_packed(
    rows: Sequence[Sequence[Pair]], seq_length: int, pad_id: int = 0, thd: bool = False
) -> RewardBatch:
    """Pack each inner list of pairs into one row (chosen then rejected, pair after pair).

    With ``thd`` the rows are laid end to end as one ``[1, rows*seq_length]`` sequence described by
    ``cu_seqlens`` (the padding tail of each row is its own segment); otherwise a block-diagonal causal
    mask ``[rows, 1, s, s]`` is built.
    """
    groups = [[(0, [seq]) for pair in row for seq in pair] for row in rows]
    placed = place_rows(groups, seq_length, pad_id, kind="packed row", unit="sequence")
    batch = RewardBatch(
        tokens=placed.tokens,
        position_ids=placed.position_ids(),
        reward_index=placed.reward_index.view(-1, 2),
        num_real_tokens=placed.num_real_tokens,
        sum_sq_lengths=placed.sum_sq_lengths,
    )
    if thd:
        batch.tokens = batch.tokens.view(1, -1)
        batch.position_ids = batch.position_ids.reshape(1, -1)
        batch.packed_seq_params = segments_to_thd(placed.segments, placed.kv_index)
    else:
        batch.attention_mask = placed.attention_mask()
    return batch


def shared_footprint(
    chosen_len: np.ndarray | int, rejected_len: np.ndarray | int, prefix_len: np.ndarray | int
):
    """Tokens a pair occupies in a shared-prefix row: ``chosen + rejected - prefix`` (elementwise).

    ``prefix_len`` must leave at least one token in each suffix (as
    :func:`~megatron_polar.data.pair_dataset.shared_prefix_length` does); an int in gives an int out.
    """
    c, r, p = (np.asarray(x, dtype=np.int64) for x in (chosen_len, rejected_len, prefix_len))
    if np.any(p < 0) or np.any(p >= np.minimum(c, r)):
        raise ValueError("prefix_len must be >= 0 and leave at least one token of chosen and of rejected")
    out = c + r - p
    return int(out) if out.ndim == 0 else out


def collate_shared(rows: Sequence[Sequence[Pair]], seq_length: int, pad_id: int = 0) -> RewardBatch:
    """Pack each inner list of pairs into one row, each pair as ``prefix | chosen suffix | rejected suffix``.

    The prefix is ``shared_prefix_length(chosen, rejected)`` tokens; it is placed once and both suffixes
    attend to it. Rows are laid end to end as one ``[1, rows*seq_length]`` stream described by
    :class:`SharedPrefixParams` (no ``s x s`` mask); one pair per row gives the padded layout. Position
    ids continue from the prefix into each suffix, so every token has the position it has in its own
    sequence. ``reward_index`` points at the last token of each suffix (chosen, rejected).

    ``num_real_tokens`` counts the tokens placed. ``sum_sq_lengths`` keeps the unit of the other
    collators, where a causal sequence of ``n`` tokens counts ``n**2`` (twice its query-key pairs): a
    suffix of ``lq`` queries over ``lk = p + lq`` keys has ``lq*p + lq*(lq+1)/2`` pairs, that is
    ``lk**2 - p**2`` in that unit, so a pair counts ``chosen**2 + rejected**2 - p**2``.
    """
    groups = []
    for r, row in enumerate(rows):
        group_row = []
        for k, (chosen, rejected) in enumerate(row):
            c = np.asarray(chosen, dtype=np.int64)
            j = np.asarray(rejected, dtype=np.int64)
            if len(c) == 0 or len(j) == 0:
                raise ValueError(f"shared-prefix row {r}, pair {k}: empty chosen or rejected sequence")
            group_row.append((shared_prefix_length(c, j), (c, j)))
        groups.append(group_row)
    batch = collate_prefix_groups(groups, seq_length, pad_id, unit="pair")
    batch.reward_index = batch.reward_index.view(-1, 2)  # each pair's two members: chosen, rejected
    return batch


def collate_prefix_groups(
    rows: Sequence[Sequence[Group]],
    seq_length: int,
    pad_id: int = 0,
    unit: str = "group",
) -> RewardBatch:
    """Rows of prefix groups ``(p, members)`` (see :func:`place_rows`) as one ``[1, rows*seq_length]``
    stream described by :class:`SharedPrefixParams`.

    The layout of :func:`collate_shared` (a pair is a group of two) for any number of members, as the
    scorer groups the candidates of one prompt. ``reward_index`` is ``[members, 1]`` in row order;
    ``unit`` names a group in the overflow error.
    """
    placed = place_rows(rows, seq_length, pad_id, kind="shared-prefix row", unit=unit)
    flat_positions = placed.position_ids().reshape(1, -1)
    return RewardBatch(
        tokens=placed.tokens.view(1, -1),
        position_ids=flat_positions,
        reward_index=placed.reward_index.view(-1, 1),
        packed_seq_params=segments_to_thd(
            placed.segments, placed.kv_index, positions=flat_positions.view(-1), shared=True
        ),
        num_real_tokens=placed.num_real_tokens,
        sum_sq_lengths=placed.sum_sq_lengths,
    )
