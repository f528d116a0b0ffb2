"""The micro-batch type every collator produces and the reward model consumes.

It lives in ``data/`` because the data layer builds it; the model layer imports it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from megatron.core.packed_seq_params import PackedSeqParams
from torch import Tensor


@dataclass
class SharedPrefixParams(PackedSeqParams):
    """THD description of shared-prefix rows (``collate_shared``): query segments and their keys.

    The token stream is ``[1, t]`` (rows end to end). Query segments (``cu_seqlens_q`` over that stream)
    are, per pair, the prefix, the chosen suffix and the rejected suffix, plus each row's padding tail.
    Each query segment attends to its own key segment (``cu_seqlens_kv`` over the *gathered* key stream
    ``kv_index``): the prefix and padding segments to themselves, each suffix to ``[prefix; suffix]``,
    always causal and aligned bottom-right (query ``i`` of ``lq`` sees key ``j`` of ``lk`` iff
    ``j <= i + lk - lq``). ``positions`` are the RoPE positions of the stream (a suffix continues from
    its prefix). ``segments`` repeats the two cumulative lengths as host integers so the local varlen
    attention loops without device syncs. ``rotary_freqs`` is filled by the model for one forward.
    """

    kv_index: Tensor | None = None  # [t_kv] int64: flat token index of each gathered key/value
    positions: Tensor | None = None  # [t] int64: RoPE position of each token of the stream
    segments: tuple[tuple[int, int, int, int], ...] = ()  # (q_start, q_end, kv_start, kv_end) per segment
    rotary_freqs: Tensor | None = None  # [t, 1, 1, d] per-token RoPE angles, set by the model


def move_packed_seq_params(psp: PackedSeqParams | None, device: torch.device) -> PackedSeqParams | None:
    """A copy of ``psp`` (any ``PackedSeqParams`` subclass) with its tensors on ``device``."""
    if psp is None:
        return None
    moved = {
        f.name: getattr(psp, f.name).to(device, non_blocking=True)
        for f in fields(psp)
        if isinstance(getattr(psp, f.name), Tensor)
    }
    return replace(psp, **moved)


@dataclass
class RewardBatch:
    """One micro-batch as the model consumes it.

    ``reward_index`` holds flat positions (``row * seq_length + column``) of the reward tokens, shaped
    ``[pairs, 2]`` with column 0 the chosen and column 1 the rejected sequence (or ``[n, 1]`` when only
    scoring). ``attention_mask`` is boolean ``[rows, 1, s, s]`` with True = masked (local spec), and
    ``packed_seq_params`` the THD description (Transformer Engine, or :class:`SharedPrefixParams` for
    shared-prefix rows on either spec); at most one of them is set.
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
        psp = move_packed_seq_params(self.packed_seq_params, device)
        return RewardBatch(
            tokens=move(self.tokens),
            position_ids=move(self.position_ids),
            reward_index=move(self.reward_index),
            attention_mask=move(self.attention_mask),
            packed_seq_params=psp,
            num_real_tokens=self.num_real_tokens,
            sum_sq_lengths=self.sum_sq_lengths,
        )
