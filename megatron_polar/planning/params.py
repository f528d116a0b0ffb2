"""Exact parameter counts of the POLAR reward model (decoder trunk + scalar head, no LM output layer).

Counted by hand from the architecture rather than by building the model, so that the planner runs
anywhere in milliseconds:

- embedding: ``V * h`` (vocabulary-parallel: sharded over TP)
- per layer: two RMSNorm weights ``2 * h`` (replicated over TP), QKV ``h * (h + 2 * kv * head_dim)``,
  attention output ``h * h``, SwiGLU ``fc1 = h * 2 * ffn`` (gate and up) and ``fc2 = ffn * h``
  (all four sharded over TP)
- final RMSNorm ``h`` and the reward head ``Linear(h, 1, bias=False)``: ``h`` (both on the last
  pipeline stage, replicated over TP)

No biases anywhere (InternLM2 / POLAR). The vocabulary is taken as configured (``model.vocab_size``);
the trainer may pad it further for TP divisibility.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_polar.config.schema import ModelConfig


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of the whole model, per layer and per pipeline stage / GPU."""

    embedding: int  # V * h
    layer_norms: int  # 2 * h per layer (replicated over TP)
    layer_linear: int  # QKV + out + fc1 + fc2 per layer (sharded over TP)
    final_norm: int  # h
    head: int  # h: Linear(h, 1, bias=False)
    num_layers: int

    @property
    def per_layer(self) -> int:
        return self.layer_norms + self.layer_linear

    @property
    def total(self) -> int:
        return self.embedding + self.num_layers * self.per_layer + self.final_norm + self.head

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def matmul(self) -> int:
        """Weights that take part in a matrix multiply per token (the ``N`` of ``6 * N * tokens``).

        The embedding is a lookup and norms are element-wise, so neither counts; the reward head does
        (one dot product per token, negligible but exact).
        """
        return self.num_layers * self.layer_linear + self.head


def count_parameters(model: ModelConfig) -> ParamCounts:
    """Exact parameter counts of the reward model described by ``model``."""
    h = model.hidden_size
    head_dim = h // model.num_attention_heads
    kv = model.num_query_groups
    qkv = h * (h + 2 * kv * head_dim)
    out = h * h
    fc1 = h * 2 * model.ffn_hidden_size
    fc2 = model.ffn_hidden_size * h
    return ParamCounts(
        embedding=model.vocab_size * h,
        layer_norms=2 * h,
        layer_linear=qkv + out + fc1 + fc2,
        final_norm=h,
        head=h,
        num_layers=model.num_layers,
    )


@dataclass(frozen=True)
class StageParams:
    """Parameters one pipeline stage holds in total and on each of its TP ranks."""

    stage: int
    layers: int
    has_embedding: bool
    has_head: bool
    total: int  # over the whole stage (all TP ranks together)
    per_gpu: int  # on one TP rank of the stage


def stage_parameters(counts: ParamCounts, tp: int, pp: int) -> list[StageParams]:
    """Split ``counts`` over ``pp`` stages of ``num_layers / pp`` layers and ``tp`` tensor shards.

    Stage 0 holds the embedding, the last stage the final norm and the reward head (with PP=1 one stage
    holds both). With an interleaved schedule a stage still holds ``num_layers / pp`` layers.
    """
    layers = counts.num_layers // pp
    stages = []
    for i in range(pp):
        first, last = i == 0, i == pp - 1
        total = layers * counts.per_layer
        per_gpu = layers * (counts.layer_norms + _ceil_div(counts.layer_linear, tp))
        if first:
            total += counts.embedding
            per_gpu += _ceil_div(counts.embedding, tp)
        if last:
            total += counts.final_norm + counts.head
            per_gpu += counts.final_norm + counts.head
        stages.append(StageParams(i, layers, first, last, total, per_gpu))
    return stages
