"""Turn token pairs into :class:`RewardBatch` micro-batches, padded or packed.

A *pair* is ``(chosen_ids, rejected_ids)``; each sequence ends with the reward token, whose hidden state
is scored. Rows are always ``seq_length`` long so pipeline stages exchange fixed-shape activations.

* padded: one sequence per row (2 rows per pair), causal attention.
* packed: whole pairs packed into rows; a block-diagonal causal mask (local spec) or THD
  ``cu_seqlens`` (Transformer Engine) keeps sequences from attending to each other, and position ids
  restart at every sequence.
* shared: whole pairs packed into rows, each pair laid out ``prefix | chosen suffix | rejected suffix``
  so the prefix the two sequences share is computed once (:func:`collate_shared`,
  :class:`~megatron_polar.data.batch.SharedPrefixParams`; docs/shared_prefix_attention.md draws the layout).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_polar.data.batch import RewardBatch, SharedPrefixParams
from megatron_polar.data.pair_dataset import shared_prefix_length

Pair = tuple[Sequence[int], Sequence[int]]


def _causal_mask(seq_length: int) -> torch.Tensor:
    return torch.triu(torch.ones(seq_length, seq_length, dtype=torch.bool), diagonal=1)


def collate_padded(
    pairs: Sequence[Pair], seq_length: int, pad_id: int = 0, explicit_mask: bool = True
) -> RewardBatch:
    """Two rows per pair, right-padded to ``seq_length``; rewards read at each sequence's last token."""
    rows = [seq for pair in pairs for seq in pair]
    tokens = torch.full((len(rows), seq_length), pad_id, dtype=torch.long)
    reward_index = torch.empty(len(rows), dtype=torch.long)
    real = sq = 0
    for r, seq in enumerate(rows):
        n = len(seq)
        if not 0 < n <= seq_length:
            raise ValueError(f"sequence of {n} tokens does not fit data.seq_length={seq_length}")
        tokens[r, :n] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        reward_index[r] = r * seq_length + n - 1
        real += n
        sq += n * n
    position_ids = torch.arange(seq_length).expand(len(rows), -1).contiguous()
    mask = _causal_mask(seq_length).expand(len(rows), 1, -1, -1) if explicit_mask else None
    return RewardBatch(
        tokens=tokens,
        position_ids=position_ids,
        reward_index=reward_index.view(-1, 2),
        attention_mask=mask,
        num_real_tokens=real,
        sum_sq_lengths=sq,
    )


def collate_packed(
    rows: Sequence[Sequence[Pair]], seq_length: int, pad_id: int = 0, thd: bool = False
) -> RewardBatch:
    """Pack each inner list of pairs into one row (chosen then rejected, pair after pair).

    With ``thd`` the rows are laid end to end as one ``[1, rows*seq_length]`` sequence described by
    ``cu_seqlens`` (the padding tail of each row is its own segment); otherwise a block-diagonal causal
    mask ``[rows, 1, s, s]`` is built.
    """
    n_rows = len(rows)
    tokens = torch.full((n_rows, seq_length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, seq_length), dtype=torch.long)
    segment = torch.full((n_rows, seq_length), -1, dtype=torch.long)
    reward_index: list[int] = []
    seqlens: list[int] = []
    real = sq = 0
    for r, row in enumerate(rows):
        col = 0
        for chosen, rejected in row:
            for seq in (chosen, rejected):
                n = len(seq)
                if col + n > seq_length:
                    raise ValueError(f"packed row {r} overflows data.seq_length={seq_length}")
                tokens[r, col : col + n] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
                position_ids[r, col : col + n] = torch.arange(n)
                segment[r, col : col + n] = len(seqlens)
                reward_index.append(r * seq_length + col + n - 1)
                seqlens.append(n)
                sq += n * n
                col += n
        real += col
        if col < seq_length:  # the padding tail attends only to itself
            position_ids[r, col:] = torch.arange(seq_length - col)
            segment[r, col:] = len(seqlens)
            seqlens.append(seq_length - col)
    batch = RewardBatch(
        tokens=tokens,
        position_ids=position_ids,
        reward_index=torch.tensor(reward_index, dtype=torch.long).view(-1, 2),
        num_real_tokens=real,
        sum_sq_lengths=sq,
    )
    if thd:
        cu = torch.zeros(len(seqlens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(seqlens, dtype=torch.int32), 0)
        max_len = max(seqlens)
        batch.tokens = tokens.view(1, -1)
        batch.position_ids = position_ids.view(1, -1)
        batch.packed_seq_params = PackedSeqParams(
            qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=max_len, max_seqlen_kv=max_len
        )
    else:
        same = segment.unsqueeze(2) == segment.unsqueeze(1)
        batch.attention_mask = (~same | _causal_mask(seq_length)).unsqueeze(1)
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
    rows: Sequence[Sequence[tuple[int, Sequence[Sequence[int]]]]],
    seq_length: int,
    pad_id: int = 0,
    unit: str = "group",
) -> RewardBatch:
    """Rows of prefix groups ``(p, members)``: the members' common first ``p`` ids placed once, then each
    member's suffix (at least one token each), every suffix attending to the prefix and itself.

    The layout of :func:`collate_shared` (a pair is a group of two) for any number of members, as the
    scorer groups the candidates of one prompt. ``reward_index`` is ``[members, 1]`` in row order;
    ``unit`` names a group in the overflow error.
    """
    n_rows = len(rows)
    tokens = torch.full((n_rows, seq_length), pad_id, dtype=torch.long)
    positions = np.zeros((n_rows, seq_length), dtype=np.int64)
    segments: list[tuple[int, int, int, int]] = []
    kv_parts: list[np.ndarray] = []
    reward_index: list[int] = []
    kv_len = real = sq = 0

    def add_segment(q_start: int, q_end: int, kv_ranges: list[tuple[int, int]]) -> None:
        nonlocal kv_len
        n_kv = sum(b - a for a, b in kv_ranges)
        segments.append((q_start, q_end, kv_len, kv_len + n_kv))
        kv_parts.extend(np.arange(a, b, dtype=np.int64) for a, b in kv_ranges)
        kv_len += n_kv

    for r, row in enumerate(rows):
        base, col = r * seq_length, 0
        for k, (p, members) in enumerate(row):
            seqs = [np.asarray(m, dtype=np.int64) for m in members]
            if p < 0 or any(len(m) <= p for m in seqs):
                raise ValueError(
                    f"shared-prefix row {r}, {unit} {k}: the prefix of {p} leaves a member empty"
                )
            need = p + sum(len(m) - p for m in seqs)
            if col + need > seq_length:
                raise ValueError(
                    f"shared-prefix row {r} overflows data.seq_length={seq_length}: {unit} {k} needs {need} "
                    f"tokens from column {col}"
                )
            prefix = (base + col, base + col + p)
            tokens[r, col : col + p] = torch.from_numpy(seqs[0][:p])
            positions[r, col : col + p] = np.arange(p)
            if p:
                add_segment(*prefix, [prefix])
            col += p
            for seq in seqs:
                n = len(seq) - p
                tokens[r, col : col + n] = torch.from_numpy(seq[p:])
                positions[r, col : col + n] = np.arange(p, len(seq))
                add_segment(base + col, base + col + n, [prefix, (base + col, base + col + n)])
                reward_index.append(base + col + n - 1)
                col += n
                sq += len(seq) ** 2 - p * p
            sq += p * p
        real += col
        if col < seq_length:  # the padding tail attends only to itself
            positions[r, col:] = np.arange(seq_length - col)
            add_segment(base + col, base + seq_length, [(base + col, base + seq_length)])
    seg = np.asarray(segments, dtype=np.int64).reshape(-1, 4)
    cu_q = np.concatenate([[0], seg[:, 1]])
    cu_kv = np.concatenate([[0], seg[:, 3]])
    flat_positions = torch.from_numpy(positions.reshape(1, -1))
    psp = SharedPrefixParams(
        qkv_format="thd",
        cu_seqlens_q=torch.from_numpy(cu_q.astype(np.int32)),
        cu_seqlens_kv=torch.from_numpy(cu_kv.astype(np.int32)),
        max_seqlen_q=int((seg[:, 1] - seg[:, 0]).max()),
        max_seqlen_kv=int((seg[:, 3] - seg[:, 2]).max()),
        kv_index=torch.from_numpy(np.concatenate(kv_parts)),
        positions=flat_positions.view(-1),
        segments=tuple(tuple(int(v) for v in s) for s in segments),
    )
    return RewardBatch(
        tokens=tokens.view(1, -1),
        position_ids=flat_positions,
        reward_index=torch.tensor(reward_index, dtype=torch.long).view(-1, 1),
        packed_seq_params=psp,
        num_real_tokens=real,
        sum_sq_lengths=sq,
    )
