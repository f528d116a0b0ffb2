"""The POLAR reward model: megatron-core's decoder trunk with a scalar reward head and no LM head.

A sequence is ``prompt + reference <split> prompt + candidate <reward>``; the reward is a bias-free
linear map of the final-norm hidden state at the reward token. Two batch layouts are supported:

* padded rows: one sequence per row, causal attention; pad tokens after the reward token never
  influence it.
* packed rows: several sequences per row and no attention across them. With Transformer Engine this is
  the THD layout (``PackedSeqParams`` with ``cu_seqlens``); with the local spec it is an explicit
  block-diagonal causal mask and position ids that restart at each sequence.
* shared-prefix rows (``collate_shared``): each pair as ``prefix | chosen | rejected`` suffixes, the
  prefix computed once; ``SharedPrefixParams`` drives the varlen core attention of
  ``model/shared_prefix_attention.py`` on both specs, and RoPE is applied there by per-token position.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.tensor_parallel import reduce_from_tensor_model_parallel_region
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock
from torch import Tensor

from megatron_polar.data.batch import RewardBatch, SharedPrefixParams
from megatron_polar.parallel import comm, cpu_backend


class PolarRewardModel(MegatronModule):
    """One pipeline chunk of the reward model.

    The first chunk owns the embedding, the last owns the final norm and the reward head; chunks in
    between only hold transformer layers. On the last stage :meth:`forward` returns rewards shaped like
    ``reward_index``; elsewhere it returns the hidden states ``[s, b, h]`` for the next stage.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_spec: ModuleSpec,
        vocab_size: int,
        max_sequence_length: int,
        rotary_base: float,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: int | None = None,
    ) -> None:
        super().__init__(config=config)
        self.pre_process = pre_process
        self.post_process = post_process
        self.vp_stage = vp_stage
        self.model_type = None  # set by the builder (encoder_or_decoder), read by the schedules
        self.input_tensor: Tensor | None = None
        # Read by megatron-core's finalize_model_grads: there is no output layer to tie.
        self.share_embeddings_and_output_weights = False
        if pre_process:
            self.embedding = LanguageModelEmbedding(
                config=config,
                vocab_size=vocab_size,
                max_sequence_length=max_sequence_length,
                position_embedding_type="rope",
            )
        self.rotary_pos_emb = RotaryEmbedding(
            kv_channels=config.kv_channels,
            rotary_percent=1.0,
            rotary_base=rotary_base,
            use_cpu_initialization=config.use_cpu_initialization,
        )
        self.decoder = TransformerBlock(
            config=config,
            spec=layer_spec,
            pre_process=pre_process,
            post_process=post_process,
            vp_stage=vp_stage,
        )
        if post_process:
            # Replicated on every TP rank: it sees the full hidden state and is tiny.
            self.reward_head = torch.nn.Linear(config.hidden_size, 1, bias=False, dtype=config.params_dtype)
            torch.nn.init.zeros_(self.reward_head.weight)

    def set_input_tensor(self, input_tensor: Tensor | list[Tensor]) -> None:
        """Receive the previous pipeline stage's activations (called by the schedules)."""
        if isinstance(input_tensor, list):
            assert len(input_tensor) == 1, "the reward model has a single input tensor"
            input_tensor = input_tensor[0]
        self.decoder.set_input_tensor(input_tensor)

    def _attention_inputs(self, batch: RewardBatch) -> tuple[Tensor | None, object]:
        """``(rotary_pos_emb, packed_seq_params)`` for the decoder.

        Shared-prefix rows get no ``rotary_pos_emb``: megatron-core's THD RoPE would restart positions
        at every query segment, while a suffix must continue from its prefix. Their per-token angles
        travel in a copy of the batch's ``SharedPrefixParams`` to the core attention, which rotates.
        The table is sized by the longest key segment (the longest sequence), not by the row.
        """
        psp = batch.packed_seq_params
        if isinstance(psp, SharedPrefixParams):
            table = self.rotary_pos_emb(int(psp.max_seqlen_kv))  # [L, 1, 1, d]
            return None, replace(psp, rotary_freqs=table[psp.positions.to(table.device)])
        return self._rotary(batch, batch.tokens.shape[1]), psp

    def _rotary(self, batch: RewardBatch, seq_length: int) -> Tensor:
        """Rotary frequencies for ``batch``, computed once per forward and shared by every layer.

        THD rows (Transformer Engine): a ``[max_seqlen, 1, 1, d]`` table indexed by the position inside
        each sequence. It must be sized by the longest *sequence*, not the row: megatron-core
        0.16.1's unfused ``_apply_rotary_pos_emb_thd`` (``models/common/embeddings/rope_utils.py``
        lines 211-218) switches to an offset mode when ``freqs.size(0) == cu_seqlens[-1]`` and then
        calls ``cu_seqlens[i].item()`` for every sequence, in every layer, for queries and keys (about
        950 host syncs per 32k-token row at 7B); TE's fused kernel (``apply_rope_fusion``, lines
        268-291) reads the table the same way, by in-sequence position, without leaving the device.

        Other rows: ``[s, 1, 1, d]`` when each row is one sequence, else per-token frequencies
        ``[s, b, 1, d]`` gathered from the position ids (they restart at every packed sequence).
        """
        psp = batch.packed_seq_params
        if psp is not None and psp.qkv_format == "thd":
            longest = max(int(psp.max_seqlen_q or 0), int(psp.max_seqlen_kv or 0))
            if longest <= 0:
                raise ValueError("THD batch without max_seqlen_q/max_seqlen_kv: cannot size the RoPE table")
            return self.rotary_pos_emb(longest)
        freqs = self.rotary_pos_emb(seq_length)  # [s, 1, 1, d] for positions 0..s-1
        pos = batch.position_ids
        if torch.equal(pos, torch.arange(seq_length, device=pos.device).expand_as(pos)):
            return freqs  # one sequence per row: the shared table applies as is
        if self.config.apply_rope_fusion:
            # TE's fused kernel takes one [s, 1, 1, d] table; per-token tables need THD or the local spec.
            raise ValueError(
                "packed rows with restarting position ids need THD packed_seq_params when RoPE is fused "
                "(Transformer Engine spec); the local spec takes them with an attention mask"
            )
        # Position ids restart at every packed sequence: pick each token's own frequencies.
        pos_sb = batch.position_ids.transpose(0, 1)
        return freqs[:, 0, 0][pos_sb].unsqueeze(2)  # [s, b, 1, d]

    def forward(self, batch: RewardBatch) -> Tensor:
        rotary, psp = self._attention_inputs(batch)  # megatron's RoPE moves itself to "cuda"
        # The rest holds no CUDA literals: skip the CPU backend's per-operation device redirection.
        with cpu_backend.suspended():
            if self.pre_process:
                hidden = self.embedding(input_ids=batch.tokens, position_ids=None)
            else:
                hidden = None  # the block uses the tensor set by set_input_tensor
            hidden = self.decoder(
                hidden_states=hidden,
                attention_mask=batch.attention_mask,
                rotary_pos_emb=rotary,
                packed_seq_params=psp,
            )
            if not self.post_process:
                return hidden
            return self.rewards_from_hidden(hidden, batch.reward_index)

    def rewards_from_hidden(self, hidden_sbh: Tensor, reward_index: Tensor) -> Tensor:
        """Score the final-norm hidden states at the flat positions ``reward_index``."""
        picked = gather_reward_rows(hidden_sbh, reward_index.reshape(-1), self.config.sequence_parallel)
        rewards = self.reward_head(picked).float().squeeze(-1)
        return rewards.view(reward_index.shape)

    def reward_hidden_states(self, batch: RewardBatch) -> Tensor:
        """Final-norm hidden states at the reward positions (single-stage models; conversion parity)."""
        assert self.pre_process and self.post_process
        rotary, psp = self._attention_inputs(batch)
        hidden = self.decoder(
            hidden_states=self.embedding(input_ids=batch.tokens, position_ids=None),
            attention_mask=batch.attention_mask,
            rotary_pos_emb=rotary,
            packed_seq_params=psp,
        )
        picked = gather_reward_rows(hidden, batch.reward_index.reshape(-1), self.config.sequence_parallel)
        return picked.view(*batch.reward_index.shape, -1)


def gather_reward_rows(
    hidden_sbh: Tensor, flat_index: Tensor, sequence_parallel: bool, group: object | None = None
) -> Tensor:
    """Hidden states ``[n, h]`` at the flat positions ``flat_index`` (``row * s + column``).

    Without sequence parallelism ``hidden_sbh`` is the whole ``[s, b, h]`` and the rows are indexed
    directly. With it, each tensor-parallel rank holds the contiguous sequence shard
    ``[rank * s/tp, (rank + 1) * s/tp)``: it picks the reward rows that fall in its shard, zeros the
    others and one all-reduce of ``[n, h]`` assembles them on every rank. That replaces an all-gather
    of the whole ``[s, b, h]`` activation (268 MB per 32k-token row at h=4096 in bf16, on every TP rank)
    by ``n * h`` values, and is exact: each row is one rank's value plus zeros. The all-reduce's
    backward is the identity, so each rank's shard receives the gradient of the rows it owns, as the
    split backward of the full gather did.
    """
    s_local, b, h = hidden_sbh.shape
    if not sequence_parallel:
        return hidden_sbh[flat_index % s_local, flat_index // s_local]
    tp = comm.tp_size() if group is None else group.size()
    rank = comm.tp_rank() if group is None else group.rank()
    s = s_local * tp
    column = flat_index % s - rank * s_local
    mine = (column >= 0) & (column < s_local)
    picked = hidden_sbh[column.clamp(0, s_local - 1), flat_index // s]
    picked = torch.where(
        mine.unsqueeze(-1), picked, torch.zeros((), dtype=picked.dtype, device=picked.device)
    )
    return reduce_from_tensor_model_parallel_region(picked, group=group)
