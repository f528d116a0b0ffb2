"""Tensor-name and packing rules between megatron_polar's full state and the two HF weight layouts.

megatron_polar's full (TP=1, PP=1) state uses the local-spec names::

    embedding.word_embeddings.weight                     [vocab, hidden]
    decoder.layers.{i}.input_layernorm.weight            [hidden]
    decoder.layers.{i}.self_attention.linear_qkv.weight  [(heads + 2 * kv_heads) * head_dim, hidden]
    decoder.layers.{i}.self_attention.linear_proj.weight [hidden, heads * head_dim]
    decoder.layers.{i}.pre_mlp_layernorm.weight          [hidden]
    decoder.layers.{i}.mlp.linear_fc1.weight             [2 * ffn, hidden]  ([gate; up])
    decoder.layers.{i}.mlp.linear_fc2.weight             [hidden, ffn]
    decoder.final_layernorm.weight                       [hidden]
    reward_head.weight                                   [1, hidden]

(the Transformer Engine spec names the two layer norms ``self_attention.linear_qkv.layer_norm_weight``
and ``mlp.linear_fc1.layer_norm_weight``: :func:`resolve_mcore_name` maps them).

``linear_qkv`` rows are grouped per KV head: ``(kv_heads, q_per_kv + 2, head_dim)`` = for each group
its query heads, then its key head, then its value head. InternLM2's ``wqkv`` uses exactly this grouping;
Llama keeps separate ``q_proj``/``k_proj``/``v_proj``. Both use the rotate-half RoPE convention, as
megatron-core's non-interleaved RoPE does, so no row permutation inside a head is needed.

Each layout yields *thunks* so that a caller materialises one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from megatron_polar.config.model_shape import TRUNK_SHAPE_KEYS
from megatron_polar.config.schema import ModelConfig

# (name, expected shape) -> tensor; raises ConversionError on a missing tensor or a shape mismatch.
Getter = Callable[[str, tuple[int, ...]], Tensor]
Thunk = Callable[[], Tensor]

_TE_NORM_ALIASES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


@dataclass(frozen=True)
class TrunkShape:
    """The dimensions that decide every tensor shape of the trunk (``model.*`` :data:`TRUNK_SHAPE_KEYS`,
    with the two head counts under shorter names)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    ffn_hidden_size: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def qkv_rows(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    @classmethod
    def of(cls, m: ModelConfig) -> TrunkShape:
        """The shape of ``m``: its :data:`TRUNK_SHAPE_KEYS` values, which are this class's fields in order."""
        return cls(*(getattr(m, k) for k in TRUNK_SHAPE_KEYS))


def resolve_mcore_name(canonical: str, available: set[str] | dict) -> str:
    """The model's own name for the local-spec name ``canonical`` (TE fuses the norms into linears)."""
    if canonical in available:
        return canonical
    for local, te in _TE_NORM_ALIASES.items():
        if canonical.endswith(local):
            alias = canonical[: -len(local)] + te
            if alias in available:
                return alias
    raise KeyError(f"the model has no parameter {canonical}")


def pack_qkv(q: Tensor, k: Tensor, v: Tensor, shape: TrunkShape) -> Tensor:
    """Separate q/k/v projections -> rows grouped per KV head ``[q_g..., k_g, v_g]``."""
    g, d, h = shape.num_kv_heads, shape.head_dim, q.shape[-1]
    grouped = torch.cat([q.view(g, shape.q_per_kv, d, h), k.view(g, 1, d, h), v.view(g, 1, d, h)], dim=1)
    return grouped.reshape(shape.qkv_rows, h)


def unpack_qkv(qkv: Tensor, shape: TrunkShape) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of :func:`pack_qkv`: (q, k, v) each ``[heads * head_dim, hidden]``."""
    g, d, h = shape.num_kv_heads, shape.head_dim, qkv.shape[-1]
    q, k, v = qkv.view(g, shape.q_per_kv + 2, d, h).split([shape.q_per_kv, 1, 1], dim=1)
    return q.reshape(-1, h), k.reshape(-1, h), v.reshape(-1, h)


def _layer(i: int) -> str:
    return f"decoder.layers.{i}."


class HFLayout:
    """One HF naming scheme: how to build each megatron tensor from HF tensors and back."""

    name: str = ""
    embed: str = ""
    final_norm: str = "model.norm.weight"
    head_names: tuple[str, ...] = ()  # reward heads accepted on import, first one written on export
    lm_head: str = ""  # dropped on import: the reward model has no LM head

    def detect(self, names: set[str]) -> bool:
        return self.embed in names

    def layer_to_mcore(self, i: int, shape: TrunkShape, get: Getter) -> Iterator[tuple[str, Thunk]]:
        raise NotImplementedError

    def layer_from_mcore(self, i: int, shape: TrunkShape, get: Callable[[str], Tensor]):
        raise NotImplementedError

    def to_mcore(self, shape: TrunkShape, get: Getter) -> Iterator[tuple[str, Thunk]]:
        """(megatron name, thunk building it from HF tensors) for the whole trunk (no reward head)."""
        h = shape.hidden_size
        yield "embedding.word_embeddings.weight", lambda: get(self.embed, (shape.vocab_size, h))
        for i in range(shape.num_layers):
            yield from self.layer_to_mcore(i, shape, get)
        yield "decoder.final_layernorm.weight", lambda: get(self.final_norm, (h,))

    def from_mcore(self, shape: TrunkShape, get: Callable[[str], Tensor]) -> Iterator[tuple[str, Thunk]]:
        """(HF name, thunk building it from megatron tensors), in checkpoint order, head last."""
        yield self.embed, lambda: get("embedding.word_embeddings.weight")
        for i in range(shape.num_layers):
            yield from self.layer_from_mcore(i, shape, get)
        yield self.final_norm, lambda: get("decoder.final_layernorm.weight")
        yield self.head_names[0], lambda: get("reward_head.weight")


class LlamaLayout(HFLayout):
    """Llama / Qwen2 (bias-free) / InternLM2.5-converted-to-Llama names."""

    name = "llama"
    embed = "model.embed_tokens.weight"
    head_names = ("score.weight", "v_head.weight")
    lm_head = "lm_head.weight"

    def layer_to_mcore(self, i, shape, get):
        p, m = f"model.layers.{i}.", _layer(i)
        h, d, f = shape.hidden_size, shape.head_dim, shape.ffn_hidden_size
        kv_rows = shape.num_kv_heads * d
        yield m + "input_layernorm.weight", lambda: get(p + "input_layernorm.weight", (h,))
        yield (
            m + "self_attention.linear_qkv.weight",
            lambda: pack_qkv(
                get(p + "self_attn.q_proj.weight", (shape.num_heads * d, h)),
                get(p + "self_attn.k_proj.weight", (kv_rows, h)),
                get(p + "self_attn.v_proj.weight", (kv_rows, h)),
                shape,
            ),
        )
        yield m + "self_attention.linear_proj.weight", lambda: get(p + "self_attn.o_proj.weight", (h, h))
        yield m + "pre_mlp_layernorm.weight", lambda: get(p + "post_attention_layernorm.weight", (h,))
        yield (
            m + "mlp.linear_fc1.weight",
            lambda: torch.cat(
                [get(p + "mlp.gate_proj.weight", (f, h)), get(p + "mlp.up_proj.weight", (f, h))]
            ),
        )
        yield m + "mlp.linear_fc2.weight", lambda: get(p + "mlp.down_proj.weight", (h, f))

    def layer_from_mcore(self, i, shape, get):
        p, m = f"model.layers.{i}.", _layer(i)
        qkv = m + "self_attention.linear_qkv.weight"
        fc1 = m + "mlp.linear_fc1.weight"
        yield p + "input_layernorm.weight", lambda: get(m + "input_layernorm.weight")
        yield p + "self_attn.q_proj.weight", lambda: unpack_qkv(get(qkv), shape)[0]
        yield p + "self_attn.k_proj.weight", lambda: unpack_qkv(get(qkv), shape)[1]
        yield p + "self_attn.v_proj.weight", lambda: unpack_qkv(get(qkv), shape)[2]
        yield p + "self_attn.o_proj.weight", lambda: get(m + "self_attention.linear_proj.weight")
        yield p + "post_attention_layernorm.weight", lambda: get(m + "pre_mlp_layernorm.weight")
        yield p + "mlp.gate_proj.weight", lambda: get(fc1).chunk(2)[0]
        yield p + "mlp.up_proj.weight", lambda: get(fc1).chunk(2)[1]
        yield p + "mlp.down_proj.weight", lambda: get(m + "mlp.linear_fc2.weight")


class InternLM2Layout(HFLayout):
    """InternLM2 / InternLM2.5 remote-code names (``InternLM2ForCausalLM``, ``InternLM2ForRewardModel``)."""

    name = "internlm2"
    embed = "model.tok_embeddings.weight"
    head_names = ("v_head.weight", "score.weight")
    lm_head = "output.weight"

    def layer_to_mcore(self, i, shape, get):
        p, m = f"model.layers.{i}.", _layer(i)
        h, f = shape.hidden_size, shape.ffn_hidden_size
        yield m + "input_layernorm.weight", lambda: get(p + "attention_norm.weight", (h,))
        # wqkv is already grouped per KV head exactly as linear_qkv.
        yield (
            m + "self_attention.linear_qkv.weight",
            lambda: get(p + "attention.wqkv.weight", (shape.qkv_rows, h)),
        )
        yield m + "self_attention.linear_proj.weight", lambda: get(p + "attention.wo.weight", (h, h))
        yield m + "pre_mlp_layernorm.weight", lambda: get(p + "ffn_norm.weight", (h,))
        yield (
            m + "mlp.linear_fc1.weight",
            lambda: torch.cat(
                [get(p + "feed_forward.w1.weight", (f, h)), get(p + "feed_forward.w3.weight", (f, h))]
            ),
        )
        yield m + "mlp.linear_fc2.weight", lambda: get(p + "feed_forward.w2.weight", (h, f))

    def layer_from_mcore(self, i, shape, get):
        p, m = f"model.layers.{i}.", _layer(i)
        fc1 = m + "mlp.linear_fc1.weight"
        yield p + "attention.wqkv.weight", lambda: get(m + "self_attention.linear_qkv.weight")
        yield p + "attention.wo.weight", lambda: get(m + "self_attention.linear_proj.weight")
        yield p + "feed_forward.w1.weight", lambda: get(fc1).chunk(2)[0]
        yield p + "feed_forward.w3.weight", lambda: get(fc1).chunk(2)[1]
        yield p + "feed_forward.w2.weight", lambda: get(m + "mlp.linear_fc2.weight")
        yield p + "attention_norm.weight", lambda: get(m + "input_layernorm.weight")
        yield p + "ffn_norm.weight", lambda: get(m + "pre_mlp_layernorm.weight")


LAYOUTS: dict[str, HFLayout] = {"llama": LlamaLayout(), "internlm2": InternLM2Layout()}


def detect_layout(names: set[str]) -> HFLayout | None:
    """The layout whose embedding tensor is present, or None."""
    for layout in LAYOUTS.values():
        if layout.detect(names):
            return layout
    return None
