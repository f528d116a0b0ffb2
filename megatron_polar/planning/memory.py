"""Per-GPU memory model: weights, gradients, optimizer state and activations.

All figures are bytes; reports print decimal GB (1e9 bytes), which is conservative against the
~85.5e9 bytes an "80 GB" H100/H800 exposes.

**Model state** (mixed precision, megatron-core distributed optimizer): bf16/fp16 weights 2 B per
parameter, fp32 main gradients 4 B (the gradient buffer is not sharded: gradients are reduce-scattered
inside it), fp32 master weights + Adam m + v 12 B sharded over the data-parallel group (not sharded
without the distributed optimizer). fp32 training keeps 4 B weights, 4 B gradients and 8 B Adam state.

**Activations** per transformer layer and micro-batch (bf16, bytes), following Korthikanti et al.,
"Reducing Activation Recomputation in Large Transformer Models" (arXiv 2205.05198, section 4), whose
GPT layer stores ``s*b*h*(34 + 5*a*s/h)``. We redo their tally for this architecture (RMSNorm, GQA,
SwiGLU, no dropout) and flash attention, which keeps no ``s x s`` score matrix (the ``5*a*s/h`` term):

====================================  =================
two norm inputs (residual stream)     ``4*s*b*h``
QKV and fc1 inputs (norm outputs)     ``4*s*b*h``
Q, and K/V for ``kv`` groups          ``2*s*b*h + 4*s*b*kv*d``
attention output (= out-proj input)   ``2*s*b*h``
fc1 output (gate and up, ``2*ffn``)   ``4*s*b*ffn``
SwiGLU output (= fc2 input)           ``2*s*b*ffn``
====================================  =================

so ``s*b*(12*h + 4*kv*d + 6*ffn)``, which for POLAR-7B (h=4096, kv*d=1024, ffn=14336) is exactly
Korthikanti's ``34*s*b*h``. With tensor parallelism every term is divided by ``t`` when sequence
parallelism is on (the paper's ``34*s*b*h/t``); without it the ``8*s*b*h`` of norm inputs and outputs
is replicated. Without flash attention (``transformer_impl=local``) the unfused softmax adds the
paper's ``5*a*s^2*b/t`` unless selective recomputation drops it again.

Recomputation (per micro-batch in flight): ``none`` and ``selective`` keep the full layer (selective
only removes the ``s^2`` term); ``full`` keeps each checkpointed chunk's input (``2*s*b*h/t`` with
sequence parallelism) and, once, the working set of the chunk being recomputed (``uniform``: chunks of
``k`` layers), or (``block``) recomputes only the first ``k`` layers of a stage and keeps the rest.

**Pipeline**: with 1F1B, stage ``i`` holds ``min(pp - i, micro-batches)`` micro-batches in flight, so
stage 0 binds; the interleaved schedule raises stage 0 to ``pp + (pp - 1) / vpp`` (Korthikanti §4.2.3).

A fixed ``overhead`` (CUDA context, NCCL buffers, cuBLAS/TE workspaces, allocator slack) is added.
Not modelled: transient gradient buffers inside one layer's backward and the rank's data batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_polar.config.schema import ModelConfig

GB = 1e9


@dataclass(frozen=True)
class Recompute:
    """Activation recomputation policy, as ``model.recompute_*`` spells it."""

    granularity: str | None = None  # None | selective | full
    method: str | None = None  # uniform | block (full only)
    num_layers: int | None = None  # chunk size (uniform) or recomputed layers per stage (block)


def layer_activation_bytes(
    model: ModelConfig,
    seq_length: int,
    micro_batch: int,
    tp: int,
    sequence_parallel: bool,
    flash_attention: bool = True,
    selective: bool = False,
) -> float:
    """Bytes one transformer layer keeps for backward, for one micro-batch, on one GPU."""
    s, b, h = seq_length, micro_batch, model.hidden_size
    d = h // model.num_attention_heads
    kv, ffn, a = model.num_query_groups, model.ffn_hidden_size, model.num_attention_heads
    replicated = 8 * s * b * h  # norm inputs and the norm outputs feeding QKV / fc1
    sharded = s * b * (4 * h + 4 * kv * d + 6 * ffn)
    act = (replicated / tp if sequence_parallel else replicated) + sharded / tp
    if not flash_attention and not selective:
        act += 5 * a * s * s * b / tp
    return act


def layer_input_bytes(
    model: ModelConfig, seq_length: int, micro_batch: int, tp: int, sequence_parallel: bool
) -> float:
    """Bytes of one checkpointed layer input (bf16 hidden states, sequence-sharded under SP)."""
    x = 2 * seq_length * micro_batch * model.hidden_size
    return x / tp if sequence_parallel else x


def in_flight_micro_batches(pp: int, vpp: int | None, num_micro_batches: int | None, stage: int = 0) -> float:
    """Micro-batches whose activations pipeline ``stage`` holds at the peak of the 1F1B schedule.

    ``pp - stage`` without interleaving; with ``vpp`` model chunks per stage the warm-up adds
    ``(pp - 1 - stage) / vpp`` (stage 0: ``pp + (pp - 1) / vpp``, Korthikanti et al. §4.2.3).
    """
    peak = float(pp - stage)
    if vpp:
        peak += (pp - 1 - stage) / vpp
    if num_micro_batches is not None:
        peak = min(peak, float(num_micro_batches))
    return max(peak, 1.0)


def stage_activation_bytes(
    model: ModelConfig,
    layers: int,
    seq_length: int,
    micro_batch: int,
    tp: int,
    sequence_parallel: bool,
    recompute: Recompute,
    in_flight: float,
    flash_attention: bool = True,
) -> float:
    """Peak activation bytes of a stage of ``layers`` layers with ``in_flight`` micro-batches."""
    full_layer = layer_activation_bytes(
        model,
        seq_length,
        micro_batch,
        tp,
        sequence_parallel,
        flash_attention,
        recompute.granularity == "selective",
    )
    if recompute.granularity != "full":
        return in_flight * layers * full_layer
    x = layer_input_bytes(model, seq_length, micro_batch, tp, sequence_parallel)
    k = max(1, min(recompute.num_layers or 1, layers))
    if recompute.method == "block":
        kept = in_flight * (k * x + (layers - k) * full_layer)
        return kept + full_layer  # the one layer being recomputed
    chunks = -(-layers // k)
    return in_flight * chunks * x + k * full_layer


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-GPU bytes of one pipeline stage."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead


def model_state_bytes(
    params_per_gpu: int, dp: int, precision: str, distributed_optimizer: bool
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes on one GPU holding ``params_per_gpu`` parameters."""
    if precision == "fp32":
        weights, grads, optim = 4.0, 4.0, 8.0  # no master copy: Adam m and v only
    else:
        weights, grads, optim = 2.0, 4.0, 12.0  # fp32 master weights + Adam m + v
    if distributed_optimizer:
        optim /= dp
    return params_per_gpu * weights, params_per_gpu * grads, params_per_gpu * optim
