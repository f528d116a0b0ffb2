"""Core attention for shared-prefix rows (``collate_shared``), on the local and Transformer Engine specs.

A shared-prefix row holds each pair as ``prefix | chosen suffix | rejected suffix``. Every query segment
(a prefix, a suffix, a padding tail) attends to its own key segment, described by
:class:`~megatron_polar.data.batch.SharedPrefixParams`: prefixes and tails to themselves, each suffix to
``[prefix; suffix]``, causally with the diagonal aligned bottom-right. That is variable-length attention
with separate query and key lengths, so no ``s x s`` mask exists anywhere:

1. RoPE by per-token position (a suffix continues from its prefix). megatron-core's THD RoPE restarts
   positions at every ``cu_seqlens`` segment (``models/common/embeddings/rope_utils.py:250-311``), so the
   model passes ``rotary_pos_emb=None`` for these batches and the rotation happens here, with
   megatron-core's own unfused formula (``_apply_rotary_pos_emb_bshd``) on a per-token table: the same
   arithmetic as the unshared packed rows of the local spec, and no host syncs.
2. Keys and values are gathered per query segment with ``index_select`` on ``kv_index``; the prefix's
   keys appear once per segment that reads them, and autograd sums their gradients back.
3. Attention: the local spec loops over segments with a small ``[lq, lk]`` mask each (PyTorch SDPA, GQA
   without repeating K/V); Transformer Engine gets the THD stream with ``cu_seqlens_q`` and
   ``cu_seqlens_kv`` and ``attn_mask_type="padding_causal_bottom_right"``.

Batches without ``SharedPrefixParams`` go to the wrapped class's forward unchanged. The classes
subclass the spec's core attention (rather than wrap it) so parameter and extra-state names, and with
them checkpoints, are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.attention import _yarn_get_concentration_factor_from_config
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import Tensor

from megatron_polar.data.batch import SharedPrefixParams
from megatron_polar.data.segments import causal_mask
from megatron_polar.model.sdpa_attention import SdpaAttention


def rotate_by_position(t_thd: Tensor, freqs_t: Tensor, config: TransformerConfig) -> Tensor:
    """RoPE on a ``[t, heads, dim]`` stream with per-token angles ``freqs_t`` ``[t, 1, 1, dim]``.

    megatron-core's unfused ``_apply_rotary_pos_emb_bshd`` (rope_utils.py:92-121) with the sequence as
    ``s`` and a batch of one, and the same ``mscale`` that ``Attention.forward`` passes (attention.py:1102).
    """
    return _apply_rotary_pos_emb_bshd(
        t_thd.unsqueeze(1),
        freqs_t,
        rotary_interleaved=config.rotary_interleaved,
        multi_latent_attention=config.multi_latent_attention,
        mscale=_yarn_get_concentration_factor_from_config(config),
    ).squeeze(1)


def varlen_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    segments: Sequence[tuple[int, int, int, int]],
    softmax_scale: float | None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Variable-length attention, causal aligned bottom-right, one query segment at a time.

    ``query`` is ``[t, heads, dim]``, ``key``/``value`` the gathered ``[t_kv, groups, dim]``;
    ``segments`` holds ``(q_start, q_end, kv_start, kv_end)``: query ``i`` of a segment of ``lq``
    queries sees key ``j`` of its ``lk`` keys iff ``j <= i + lk - lq``. Returns ``[t, heads * dim]``.
    Each segment takes at most an ``[lq, lk]`` mask (``data/segments.py:causal_mask``); none of the row's
    size.
    """
    gqa = key.shape[1] != query.shape[1]
    outs = []
    for q0, q1, k0, k1 in segments:
        lq, lk = q1 - q0, k1 - k0
        q, k, v = (x.transpose(0, 1) for x in (query[q0:q1], key[k0:k1], value[k0:k1]))
        # top-left and bottom-right alignments only differ when lk != lq; else SDPA's causal kernel
        keep = ~causal_mask(lq, lk, device=query.device) if lk != lq else None
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=keep,
            dropout_p=dropout_p,
            is_causal=keep is None,
            scale=softmax_scale,
            enable_gqa=gqa,
        )
        outs.append(out.transpose(0, 1))
    context = torch.cat(outs, dim=0)
    return context.reshape(context.shape[0], -1)


class SharedPrefixAttentionMixin:
    """Routes :class:`SharedPrefixParams` batches through RoPE, the K/V gather and varlen attention.

    The concrete class provides ``_varlen`` (the attention proper) and is a megatron core attention
    whose ``forward`` takes other batches unchanged.
    """

    config: TransformerConfig

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Tensor | None = None,
        packed_seq_params: PackedSeqParams | None = None,
        **kwargs,
    ) -> Tensor:
        psp = packed_seq_params
        if not isinstance(psp, SharedPrefixParams):
            return super().forward(  # type: ignore[misc]
                query,
                key,
                value,
                attention_mask,
                attn_mask_type=attn_mask_type,
                attention_bias=attention_bias,
                packed_seq_params=packed_seq_params,
                **kwargs,
            )
        if attention_bias is not None:
            raise ValueError("shared-prefix rows do not take an attention bias")
        if psp.rotary_freqs is None:
            raise ValueError(
                "shared-prefix rows reached attention without rotary_freqs (set by the reward model)"
            )
        # [t, heads, dim] here: megatron-core squeezed the batch of one for qkv_format="thd" (attention.py:1066)
        query = rotate_by_position(query, psp.rotary_freqs, self.config)
        key = rotate_by_position(key, psp.rotary_freqs, self.config)
        key = key.index_select(0, psp.kv_index)
        value = value.index_select(0, psp.kv_index)
        return self._varlen(query, key, value, psp)

    def _varlen(self, query: Tensor, key: Tensor, value: Tensor, psp: SharedPrefixParams) -> Tensor:
        raise NotImplementedError


class SharedPrefixSdpaAttention(SharedPrefixAttentionMixin, SdpaAttention):
    """The local spec's core attention, with shared-prefix rows run segment by segment."""

    def _varlen(self, query: Tensor, key: Tensor, value: Tensor, psp: SharedPrefixParams) -> Tensor:
        dropout = self.attention_dropout.p if self.training else 0.0
        return varlen_attention(query, key, value, psp.segments, self.softmax_scale, dropout)


@functools.cache
def te_shared_prefix_attention() -> type:
    """Transformer Engine's core attention (megatron-core's ``TEDotProductAttention``) with shared-prefix
    rows. Built on first use because Transformer Engine is optional and only imports on a GPU machine.

    megatron-core's ``TEDotProductAttention.forward`` passes ``attn_mask_type.name`` and, for THD, only
    turns ``causal`` into ``padding_causal`` (``extensions/transformer_engine.py:1396-1404``); its
    ``AttnMaskType`` has no ``padding_causal_bottom_right`` (``transformer/enums.py:49-57``). TE's
    ``DotProductAttention.forward`` requires a ``padding`` mask type for THD and takes
    ``padding_causal_bottom_right`` (``transformer_engine/pytorch/attention/dot_product_attention/
    dot_product_attention.py:1746-1754, 1781-1787`` at d0067d0), so this class calls TE's forward
    directly with separate ``cu_seqlens_q``/``cu_seqlens_kv``.
    """
    import transformer_engine.pytorch as te
    from megatron.core.extensions.transformer_engine import TEDotProductAttention

    class TESharedPrefixAttention(SharedPrefixAttentionMixin, TEDotProductAttention):
        def _varlen(self, query: Tensor, key: Tensor, value: Tensor, psp: SharedPrefixParams) -> Tensor:
            return te.DotProductAttention.forward(
                self,
                query,
                key,
                value,
                None,
                qkv_format="thd",
                cu_seqlens_q=psp.cu_seqlens_q,
                cu_seqlens_kv=psp.cu_seqlens_kv,
                max_seqlen_q=psp.max_seqlen_q,
                max_seqlen_kv=psp.max_seqlen_kv,
                attn_mask_type="padding_causal_bottom_right",
            )

    return TESharedPrefixAttention
