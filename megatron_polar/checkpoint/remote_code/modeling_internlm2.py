"""POLAR reward model in the InternLM2 layout, for ``AutoModel.from_pretrained(..., trust_remote_code=True)``.

Written by megatron_polar for its ``export-hf --format internlm2`` directories. It computes what the
megatron_polar reward model computes: a pre-norm decoder (RMSNorm, grouped-query attention with
rotate-half RoPE, SwiGLU MLP) and a bias-free linear head ``v_head`` read at the last attended position
of each row, which must hold the reward token. Weight names are those of the released InternLM2
checkpoints (``model.tok_embeddings``, ``attention.wqkv`` packed per KV head, ``feed_forward.w1/w3/w2``,
``attention_norm``, ``ffn_norm``, ``model.norm``, ``v_head``), so vLLM, SGLang and lmdeploy read the same
files with their own InternLM2 reward-model classes.

This module is for scoring: no KV cache, no generation, no training-time dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutputWithPast

from .configuration_internlm2 import InternLM2Config


class InternLM2RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype before the weight."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_base(config: InternLM2Config, seq_len: int) -> float:
    """The RoPE base for a batch of ``seq_len`` positions.

    Dynamic NTK scaling raises the base only when the sequence is longer than
    ``max_position_embeddings``; below that it is ``rope_theta`` unchanged.
    """
    base = float(config.rope_theta)
    scaling = config.rope_scaling or {}
    kind = scaling.get("type", scaling.get("rope_type"))
    limit = config.max_position_embeddings
    if kind == "dynamic" and seq_len > limit:
        factor = float(scaling.get("factor", 1.0))
        dim = config.hidden_size // config.num_attention_heads
        base *= ((factor * seq_len / limit) - (factor - 1)) ** (dim / (dim - 2))
    return base


def rope_cos_sin(config: InternLM2Config, position_ids: torch.Tensor, dtype: torch.dtype):
    """cos, sin ``[batch, seq, head_dim]`` for rotate-half RoPE at ``position_ids``."""
    dim = config.hidden_size // config.num_attention_heads
    seq_len = int(position_ids.max().item()) + 1 if position_ids.numel() else 1
    base = rope_base(config, seq_len)
    device = position_ids.device
    # float32 throughout, as megatron-core's RotaryEmbedding computes it, so rewards agree to ~1e-6.
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    angles = position_ids.to(torch.float32)[..., None] * inv_freq  # [b, s, dim/2]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class InternLM2Attention(nn.Module):
    """Grouped-query attention; ``wqkv`` rows are grouped per KV head: its query heads, key, value."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.q_per_kv = self.num_heads // self.num_kv_heads
        rows = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.wqkv = nn.Linear(config.hidden_size, rows, bias=config.bias)
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor):
        b, s, _ = x.shape
        qkv = self.wqkv(x).view(b, s, self.num_kv_heads, self.q_per_kv + 2, self.head_dim)
        q = qkv[..., : self.q_per_kv, :].reshape(b, s, self.num_heads, self.head_dim)
        k = qkv[..., -2, :]
        v = qkv[..., -1, :]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [b, heads, s, d]
        cos, sin = cos[:, None], sin[:, None]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(self.q_per_kv, dim=1)
        v = v.repeat_interleave(self.q_per_kv, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        scores = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
        probs = F.softmax(scores, dim=-1).to(v.dtype)
        out = (probs @ v).transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        return self.wo(out)


class InternLM2MLP(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported (silu only)")
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class InternLM2DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attention(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        self.attention = InternLM2Attention(config)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class InternLM2PreTrainedModel(PreTrainedModel):
    """Weight initialisation and the config class; every checkpoint overwrites all weights."""

    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["InternLM2DecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, std)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
        elif isinstance(module, InternLM2RMSNorm):
            module.weight.data.fill_(1.0)


def _attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Boolean ``[b, 1, s, s]``, True where a query may attend: causal and not padding."""
    s = attention_mask.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=attention_mask.device).tril()
    keys = attention_mask.bool()[:, None, None, :]
    # A padding query attends to itself so that its softmax row is never empty (its output is unused).
    diagonal = torch.eye(s, dtype=torch.bool, device=attention_mask.device)
    return (causal & keys) | diagonal


class InternLM2Model(InternLM2PreTrainedModel):
    """The decoder trunk: embeddings, layers, final norm."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(InternLM2DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = InternLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = x.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(b, s, dtype=torch.long, device=x.device)
        if position_ids is None:
            # Positions count attended tokens only, so left and right padding both give 0, 1, 2, ...
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = rope_cos_sin(self.config, position_ids, x.dtype)
        mask = _attention_mask(attention_mask)
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
            if hidden is not None:
                hidden.append(x)
        x = self.norm(x)
        if hidden is not None:
            hidden[-1] = x
        if return_dict is False:
            return (x, tuple(hidden)) if hidden is not None else (x,)
        return BaseModelOutput(last_hidden_state=x, hidden_states=tuple(hidden) if hidden else None)


class InternLM2ForRewardModel(InternLM2PreTrainedModel):
    """The trunk plus ``v_head``; ``logits`` ``[batch, 1]`` is the reward at each row's last attended token.

    As in the released POLAR checkpoints, the caller appends ``config.reward_token_id`` to each
    sequence; with padding, pass ``attention_mask`` (left or right padding both work).
    """

    _auto_class = "AutoModel"

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.v_head = nn.Linear(config.hidden_size, 1, bias=False)
        self.reward_token_id = config.reward_token_id
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.tok_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        values = self.v_head(out.last_hidden_state).squeeze(-1)  # [b, s]
        b, s = values.shape
        if attention_mask is None:
            last = torch.full((b,), s - 1, dtype=torch.long, device=values.device)
        else:
            # Index of the last attended position (the rightmost 1), for left or right padding.
            cols = torch.arange(s, device=values.device).expand(b, s)
            last = torch.where(attention_mask.bool(), cols, -1).max(dim=1).values.clamp(min=0)
        rewards = values.gather(1, last[:, None])
        if return_dict is False:
            return (rewards,)
        return SequenceClassifierOutputWithPast(logits=rewards, hidden_states=out.hidden_states)

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]]) -> list[float]:
        """Rewards of token sequences (each already ending in the reward token), right-padded in one batch."""
        width = max(len(seq) for seq in sequences)
        pad = self.config.pad_token_id if self.config.pad_token_id is not None else 0
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        device = self.v_head.weight.device
        rewards = self(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        return rewards[:, 0].float().tolist()
