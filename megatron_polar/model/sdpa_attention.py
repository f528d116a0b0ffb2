"""Core attention for the local (non-Transformer-Engine) spec through PyTorch's fused SDPA kernel.

megatron-core's local ``DotProductAttention`` materialises the ``[b, heads, s, s]`` scores, applies the
mask with ``masked_fill`` and runs an unfused softmax. ``scaled_dot_product_attention`` computes the same
thing with a fused (flash/memory-efficient on CPU too) kernel, handles grouped-query attention without
repeating K/V, and takes the causal case without any mask tensor.

Mask convention (megatron's): a boolean ``attention_mask`` with True = masked; ``None`` means causal.
Padded rows therefore need no mask at all; packed rows pass their block-diagonal causal mask.
"""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from torch import Tensor


class SdpaAttention(DotProductAttention):
    """Drop-in core attention: same construction and shapes as ``DotProductAttention``."""

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
    ) -> Tensor:
        if packed_seq_params is not None:
            raise ValueError(
                "THD packed sequences need the Transformer Engine spec; the local spec uses a mask"
            )
        if attention_bias is not None:
            raise ValueError("attention bias is not supported")
        sq, b = query.shape[0], query.shape[1]
        # [s, b, heads, dim] -> [b, heads, s, dim]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        keep = None if attention_mask is None else ~attention_mask
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=keep,
            dropout_p=self.attention_dropout.p if self.training else 0.0,
            is_causal=keep is None,
            scale=self.softmax_scale,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        # [b, heads, s, dim] -> [s, b, heads * dim]
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
