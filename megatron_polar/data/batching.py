"""Turn token pairs into :class:`RewardBatch` micro-batches, padded or packed.

A *pair* is ``(chosen_ids, rejected_ids)``; each sequence ends with the reward token, whose hidden state
is scored. Rows are always ``seq_length`` long so pipeline stages exchange fixed-shape activations.

* padded: one sequence per row (2 rows per pair), causal attention.
* packed: whole pairs packed into rows; a block-diagonal causal mask (local spec) or THD
  ``cu_seqlens`` (Transformer Engine) keeps sequences from attending to each other, and position ids
  restart at every sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_polar.data.batch import RewardBatch

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
