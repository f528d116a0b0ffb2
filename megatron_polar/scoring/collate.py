"""Length-bucketed micro-batches of single sequences for scoring.

Scoring reads one reward per sequence, at its last token (the reward token). Sequences are sorted by
length and grouped greedily under a token budget (rows x padded length), each micro-batch padded only to
its own longest sequence rounded up to ``pad_multiple``; the caller restores the original order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from megatron_polar.model.reward_model import RewardBatch


def padded_length(n: int, pad_multiple: int) -> int:
    """``n`` rounded up to a multiple of ``pad_multiple``."""
    return -(-n // pad_multiple) * pad_multiple


def collate_sequences(
    seqs: Sequence[Sequence[int]],
    seq_length: int | None = None,
    *,
    pad_id: int = 0,
    pad_multiple: int = 16,
    explicit_mask: bool = True,
) -> RewardBatch:
    """One right-padded row per sequence, ``reward_index`` shaped ``[n, 1]`` at each last token.

    ``seq_length`` defaults to the longest sequence rounded up to ``pad_multiple``. With
    ``explicit_mask`` a boolean causal mask (True = masked) is attached, as the local spec needs; padding
    sits after the reward token, so causal attention keeps it out of every reward.
    """
    if not seqs:
        raise ValueError("collate_sequences needs at least one sequence")
    longest = max(len(s) for s in seqs)
    if seq_length is None:
        seq_length = padded_length(longest, pad_multiple)
    tokens = torch.full((len(seqs), seq_length), pad_id, dtype=torch.long)
    reward_index = torch.empty(len(seqs), 1, dtype=torch.long)
    for r, seq in enumerate(seqs):
        n = len(seq)
        if not 0 < n <= seq_length:
            raise ValueError(f"sequence {r} has {n} tokens; it must have 1..{seq_length}")
        tokens[r, :n] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
        reward_index[r, 0] = r * seq_length + n - 1
    mask = None
    if explicit_mask:
        causal = torch.triu(torch.ones(seq_length, seq_length, dtype=torch.bool), diagonal=1)
        mask = causal.expand(len(seqs), 1, -1, -1)
    return RewardBatch(
        tokens=tokens,
        position_ids=torch.arange(seq_length).expand(len(seqs), -1).contiguous(),
        reward_index=reward_index,
        attention_mask=mask,
        num_real_tokens=sum(len(s) for s in seqs),
    )


def plan_micro_batches(
    lengths: Sequence[int], batch_tokens: int, max_sequences: int, pad_multiple: int = 16
) -> list[list[int]]:
    """Group sequence indices into micro-batches, longest first.

    A micro-batch holds at most ``max_sequences`` sequences and ``rows * padded_longest <= batch_tokens``
    (a sequence longer than the budget gets a micro-batch of its own). The plan depends only on the
    lengths, so the same inputs always meet the same batches.
    """
    if batch_tokens < 1 or max_sequences < 1:
        raise ValueError("batch_tokens and max_sequences must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        w = width or padded_length(lengths[i], pad_multiple)  # the first (longest) sets the width
        if current and (len(current) + 1 > max_sequences or (len(current) + 1) * w > batch_tokens):
            batches.append(current)
            current, w = [], padded_length(lengths[i], pad_multiple)
        current.append(i)
        width = w
    if current:
        batches.append(current)
    return batches
