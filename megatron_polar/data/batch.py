"""The micro-batch type every collator produces and the reward model consumes.

It lives in ``data/`` because the data layer builds it; the model layer imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from torch import Tensor


@dataclass
class RewardBatch:
    """One micro-batch as the model consumes it.

    ``reward_index`` holds flat positions (``row * seq_length + column``) of the reward tokens, shaped
    ``[pairs, 2]`` with column 0 the chosen and column 1 the rejected sequence (or ``[n, 1]`` when only
    scoring). ``attention_mask`` is boolean ``[rows, 1, s, s]`` with True = masked (local spec), and
    ``packed_seq_params`` the THD description (Transformer Engine); at most one of them is set.
    """

    tokens: Tensor  # [rows, s] int64
    position_ids: Tensor  # [rows, s] int64
    reward_index: Tensor  # [pairs, 2] int64
    attention_mask: Tensor | None = None
    packed_seq_params: PackedSeqParams | None = None
    num_real_tokens: int = 0  # non-padding tokens, for throughput accounting
    sum_sq_lengths: int = 0  # sum of squared sequence lengths, for attention FLOPs

    def to(self, device: torch.device) -> RewardBatch:
        move = lambda t: t.to(device, non_blocking=True) if isinstance(t, Tensor) else t  # noqa: E731
        psp = self.packed_seq_params
        if psp is not None:
            psp = PackedSeqParams(
                qkv_format=psp.qkv_format,
                cu_seqlens_q=move(psp.cu_seqlens_q),
                cu_seqlens_kv=move(psp.cu_seqlens_kv),
                max_seqlen_q=psp.max_seqlen_q,
                max_seqlen_kv=psp.max_seqlen_kv,
            )
        return RewardBatch(
            tokens=move(self.tokens),
            position_ids=move(self.position_ids),
            reward_index=move(self.reward_index),
            attention_mask=move(self.attention_mask),
            packed_seq_params=psp,
            num_real_tokens=self.num_real_tokens,
            sum_sq_lengths=self.sum_sq_lengths,
        )
