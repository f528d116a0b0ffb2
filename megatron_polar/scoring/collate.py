"""Length-bucketed micro-batches of single sequences for scoring.

Scoring reads one reward per sequence, at its last token (the reward token). Sequences are sorted by
length and grouped greedily under a token budget (rows x padded length), each micro-batch padded only to
its own longest sequence rounded up to ``pad_multiple``; the caller restores the original order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from megatron_polar.data.batch import RewardBatch


def padded_length(n: int, pad_multiple: int) -> int:
    """``n`` rounded up to a multiple of ``pad_multiple``."""
    return -(-n // pad_multiple) * pad_multiple


def collate_sequences(
    seqs: Sequence[Sequence[int]],
    seq_length: int | None = None,
    *,
    pad_id: int = 0,
    pad_multiple: int = 16,
    explicit_mask: bool = False,
) -> RewardBatch:
    """One right-padded row per sequence, ``reward_index`` shaped ``[n, 1]`` at each last token.

    ``seq_length`` defaults to the longest sequence rounded up to ``pad_multiple``. With
    ``explicit_mask`` a boolean causal mask (True = masked) is attached; without it both specs attend
    causally (SDPA's causal kernel, TE's causal mask type). Padding sits after the reward token, so
    causal attention keeps it out of every reward.
    """
    if not seqs:
        raise ValueError("collate_sequences needs at least one sequence")
    lengths = [len(s) for s in seqs]
    if seq_length is None:
        seq_length = padded_length(max(lengths), pad_multiple)
    rows = len(seqs)
    tokens = np.full((rows, seq_length), pad_id, dtype=np.int64)
    for r, (seq, n) in enumerate(zip(seqs, lengths)):
        if not 0 < n <= seq_length:
            raise ValueError(f"sequence {r} has {n} tokens; it must have 1..{seq_length}")
        tokens[r, :n] = seq
    ends = np.arange(rows, dtype=np.int64) * seq_length + np.asarray(lengths, dtype=np.int64) - 1
    # Every row is one sequence starting at 0: one shared causal mask and position row, broadcast (views,
    # no per-row O(s^2) memory), cached per length because a server meets the same few lengths again.
    mask = _causal_mask(seq_length).expand(rows, 1, -1, -1) if explicit_mask else None
    return RewardBatch(
        tokens=torch.from_numpy(tokens),
        position_ids=_positions(seq_length).expand(rows, -1),
        reward_index=torch.from_numpy(ends).view(rows, 1),
        attention_mask=mask,
        num_real_tokens=sum(lengths),
    )


_shared: dict[str, torch.Tensor] = {}


def _causal_mask(seq_length: int) -> torch.Tensor:
    """Boolean ``[1, 1, s, s]``, True above the diagonal (masked).

    The top-left ``s x s`` corner of a larger causal mask is the causal mask of length ``s``, so one
    tensor (grown to the longest length met, in steps of 256) serves every batch as a read-only view.
    """
    mask = _shared.get("mask")
    if mask is None or mask.shape[0] < seq_length:
        n = padded_length(seq_length, 256)
        mask = _shared["mask"] = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    return mask[:seq_length, :seq_length].view(1, 1, seq_length, seq_length)


def _positions(seq_length: int) -> torch.Tensor:
    """``[[0, 1, ..., s-1]]`` as a view of one shared ``arange``."""
    pos = _shared.get("positions")
    if pos is None or pos.shape[0] < seq_length:
        pos = _shared["positions"] = torch.arange(padded_length(seq_length, 256))
    return pos[:seq_length].view(1, seq_length)


def plan_micro_batches(
    lengths: Sequence[int],
    batch_tokens: int,
    max_sequences: int,
    pad_multiple: int = 16,
    overhead_tokens: int = 256,
) -> list[list[int]]:
    """Group sequence indices into micro-batches of consecutive lengths, longest first.

    A micro-batch holds at most ``max_sequences`` sequences and ``rows * padded_longest <= batch_tokens``
    (a sequence longer than the budget gets a micro-batch of its own). Among such plans it picks the
    cheapest, counting each micro-batch as ``overhead_tokens + rows * padded_longest`` token slots: it
    cuts where the padding a cut saves outweighs the fixed cost of one more forward pass (the default,
    256 token slots, is about that cost for the tiny CPU model and for a 7B model on a GPU), so short and
    long sequences only share a width when that is cheaper. The plan depends only on the lengths, so the
    same inputs always meet the same batches.
    """
    if batch_tokens < 1 or max_sequences < 1 or overhead_tokens < 1:
        raise ValueError("batch_tokens, max_sequences and overhead_tokens must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    widths = [padded_length(lengths[i], pad_multiple) for i in order]
    n = len(order)
    # cost[j]: cheapest plan of the last n - j sequences; cut[j]: where its first micro-batch ends.
    cost = [0] * (n + 1)
    cut = [n] * (n + 1)
    for j in range(n - 1, -1, -1):
        best, best_end = None, j + 1
        for end in range(j + 1, min(n, j + max_sequences) + 1):
            rows = end - j
            if rows > 1 and rows * widths[j] > batch_tokens:
                break
            c = overhead_tokens + rows * widths[j] + cost[end]
            if best is None or c < best or (c == best and end > best_end):
                best, best_end = c, end
        cost[j], cut[j] = best, best_end
    batches, j = [], 0
    while j < n:
        batches.append(order[j : cut[j]])
        j = cut[j]
    return batches
