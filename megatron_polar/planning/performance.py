"""Predict the time of a training step from what the layout costs, instead of one assumed MFU.

Per micro-batch and pipeline stage, on one GPU (``T`` tokens of a micro-batch, ``l`` layers of the stage):

- **GEMMs**: ``2 * W / tp`` FLOPs per token per layer forward (``W`` the layer's linear weights), twice that
  backward, plus one more forward for recomputed layers; run at ``peak * efficiency(size class) * scale``,
  the class set by the smallest GEMM dimension on a TP rank (:data:`GEMM_EFFICIENCY`). FP8 GEMMs run
  :data:`FP8_GEMM_SPEEDUP` times faster.
- **attention** (flash, causal): ``6 * l * h * s_attn / tp`` FLOPs per token fwd+bwd (half of
  ``12 l h s``), at ``peak * ATTENTION_EFFICIENCY * scale``; recompute adds its forward third.
- **element-wise** (norms, SwiGLU, RoPE, residuals): memory-bound; each of the ``34 h`` activation bytes
  a layer keeps per token (Korthikanti et al., arXiv 2205.05198, Table 2; ``/tp`` with sequence
  parallelism) is taken as read or written :data:`ELEMENTWISE_PASSES` times at :data:`HBM_GB_S`.
- **TP communication**: per layer, forward 2 all-gathers + 2 reduce-scatters (sequence parallel) or 2
  all-reduces (without), the same again backward and once more per recomputed forward, each moving
  ``(tp-1)/tp`` of a ``[T, h]`` bf16 tensor per GPU (an all-reduce twice that) at ``nvlink / 2 *
  NCCL_BUS_EFFICIENCY`` (NVLink figures are both directions). With ``tp_comm_overlap`` all but
  :data:`TP_OVERLAP_EXPOSED` of it hides behind the layer's GEMMs when they are longer.
- **pipeline**: p2p of ``[T/tp, h]`` bf16 per stage boundary, forward and backward, ``vpp`` times with
  interleaving, at the network bandwidth when stages cross nodes; bubble ``(pp-1) / (vpp * m)``.
- **data parallel**: reduce-scatter of fp32 gradients and all-gather of bf16 parameters of the GPU's
  ``P`` parameters, ``(dp-1)/dp`` of each, over the network (:data:`IB_GB_S` per GPU); overlapped with
  the backward of the last micro-batch and the forward of the first, the rest exposed.
- the optimizer step: ``16 * P / dp`` bytes (fp32 master, m, v, gradient), 3 passes, at HBM speed.

``scale`` multiplies every kernel efficiency. Its default, :func:`anchor_scale`, is fitted to the one
published end-to-end figure at this size, megatron-core's 7.1B GPT at 47% MFU on H100 (facts.md §5;
layout not published with the figure: taken as TP1 PP1 DP96, 4k rows, no recompute), which absorbs what
the terms above leave out (kernel launches, host work, the loss, imperfect overlap). A measured step of
our own (``--calibrate``, :mod:`.calibration`) replaces it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

from megatron_polar.config.schema import ModelConfig
from megatron_polar.planning.params import count_parameters

# Kernel efficiency of BF16 GEMMs (fraction of dense peak) by the smallest dimension on a TP rank.
# Assumed, not measured here: large cuBLAS GEMMs on H100 run at 70-80% of the 989 TFLOP/s peak, thin
# ones drop; chosen so that a 7B layer at TP1 lands near megatron-core's published 47% MFU (facts.md §5).
# `--calibrate` replaces their common scale with a measured one.
GEMM_EFFICIENCY = ((4096, 0.78), (2048, 0.72), (1024, 0.62), (0, 0.45))
# Flash attention fwd+bwd on Hopper: FlashAttention-2 reaches ~35-50% of H100 peak, FlashAttention-3 /
# cuDNN ~60-75% forward (Shah et al., arXiv 2407.08608); varlen rows of ~5k tokens sit below: 0.45.
ATTENTION_EFFICIENCY = 0.45
FP8_GEMM_SPEEDUP = 1.6  # Llama-class 7-8B: 700-776 FP8 TFLOP/s vs 47% of 989 BF16 (facts.md §5)
HBM_GB_S = 3350.0  # H800/H100 SXM HBM3 (NVIDIA datasheet)
ELEMENTWISE_PASSES = 3.0  # each kept activation written once, read back in backward, once more for norms
NCCL_BUS_EFFICIENCY = 0.8  # nccl-tests bus bandwidth reaches ~80% of the link on NVLink and IB
IB_GB_S = 50.0  # one 400 Gb/s NIC per GPU (8 x 400 Gb/s per H800 node)
TP_OVERLAP_EXPOSED = 0.2  # share of TP traffic left exposed with TE userbuffer overlap (assumed)
DP_OVERLAP = True  # overlap_grad_reduce / overlap_param_gather on (our parallel presets)


@dataclass(frozen=True)
class Layout:
    """One candidate process layout and micro-batching."""

    tp: int = 1
    pp: int = 1
    vpp: int | None = None
    dp: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"  # none | selective | full
    recompute_fraction: float = 1.0  # share of layers fully recomputed (block method: k / layers)
    micro_batch_tokens: int = 32768  # tokens of one micro-batch (rows x row length)
    num_micro_batches: int = 1  # per DP rank and step
    fp8: bool = False
    tp_comm_overlap: bool = False

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def label(self) -> str:
        v = f" VPP{self.vpp}" if self.vpp else ""
        sp = " SP" if self.sequence_parallel else ""
        return f"TP{self.tp}{sp} PP{self.pp}{v} DP{self.dp} rc={self.recompute}{' fp8' if self.fp8 else ''}"


@dataclass(frozen=True)
class GpuSpec:
    """What one GPU and its links offer (defaults: H800 SXM)."""

    peak_tflops: float = 989.0
    nvlink_gb_s: float = 400.0  # both directions, per GPU
    ib_gb_s: float = IB_GB_S
    hbm_gb_s: float = HBM_GB_S
    gpus_per_node: int = 8


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step on one GPU, by cause (``total`` includes the pipeline bubble)."""

    gemm: float
    attention: float
    elementwise: float
    tp_comm: float  # exposed
    pp_comm: float
    bubble: float
    dp_comm: float  # exposed
    optimizer: float
    tokens_per_step: float  # processed tokens of the whole job per step
    model_flops_per_step: float

    @property
    def total(self) -> float:
        return (
            self.gemm
            + self.attention
            + self.elementwise
            + self.tp_comm
            + self.pp_comm
            + self.bubble
            + self.dp_comm
            + self.optimizer
        )

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.total

    def mfu(self, gpus: int, peak_tflops: float) -> float:
        return self.model_flops_per_step / (self.total * gpus * peak_tflops * 1e12)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d


def gemm_efficiency(smallest_dim: float) -> float:
    """Kernel efficiency of a GEMM whose smallest dimension is ``smallest_dim``."""
    for floor, eff in GEMM_EFFICIENCY:
        if smallest_dim >= floor:
            return eff
    return GEMM_EFFICIENCY[-1][1]


def layer_gemms(model: ModelConfig, tp: int) -> list[tuple[float, float]]:
    """(weights on a TP rank, smallest GEMM dimension) of each linear layer of a transformer layer."""
    h, ffn = model.hidden_size, model.ffn_hidden_size
    qkv_out = h + 2 * model.num_query_groups * (h // model.num_attention_heads)
    shapes = [(h, qkv_out / tp), (h / tp, h), (h, 2 * ffn / tp), (ffn / tp, h)]  # (in, out) per rank
    return [(i * o, min(i, o)) for i, o in shapes]


def _ring(bytes_: float, n: int, gb_s: float) -> float:
    """Seconds for an all-gather or reduce-scatter of ``bytes_`` (the full tensor) over ``n`` ranks."""
    return 0.0 if n <= 1 else bytes_ * (n - 1) / n / (gb_s * 1e9 * NCCL_BUS_EFFICIENCY)


def predict_step(
    model: ModelConfig,
    layout: Layout,
    attn_length: float,
    gpu: GpuSpec = GpuSpec(),
    scale: float | None = None,
) -> StepTime:
    """Seconds of one optimizer step of ``layout`` (see the module docstring for every term)."""
    if scale is None:
        scale = anchor_scale()
    tp, pp, dp, m = layout.tp, layout.pp, layout.dp, layout.num_micro_batches
    layers = model.num_layers / pp
    tokens = float(layout.micro_batch_tokens)
    h = model.hidden_size
    peak = gpu.peak_tflops * 1e12
    # Forward passes per micro-batch: 1 forward + 2 (backward) + 1 more forward if recomputed.
    passes = 3.0 + (layout.recompute_fraction if layout.recompute == "full" else 0.0)
    attn_passes = passes + (1.0 if layout.recompute == "selective" else 0.0)  # selective redoes attention
    fp8 = FP8_GEMM_SPEEDUP if layout.fp8 else 1.0

    gemm_fwd = sum(
        2.0 * w * tokens / (peak * gemm_efficiency(d) * scale * fp8) for w, d in layer_gemms(model, tp)
    )
    gemm = gemm_fwd * passes * layers
    attn_fwd = 2.0 * h * attn_length * tokens / tp  # causal: half of 4 * h * s per token forward
    attention = attn_fwd / (peak * ATTENTION_EFFICIENCY * scale) * attn_passes * layers
    kept = 34.0 * h * tokens / (tp if layout.sequence_parallel or tp == 1 else 1.0)
    elementwise = kept * ELEMENTWISE_PASSES / (gpu.hbm_gb_s * 1e9) * (passes / 3.0) * layers

    tp_link = gpu.nvlink_gb_s / 2.0 if tp <= gpu.gpus_per_node else gpu.ib_gb_s
    act = 2.0 * tokens * h  # bf16 [T, h]
    per_pass = 4 * _ring(act, tp, tp_link)  # 2 AG + 2 RS, or 2 all-reduces (= 2 x (AG + RS))
    tp_comm = per_pass * passes * layers
    if layout.tp_comm_overlap:
        tp_comm = max(TP_OVERLAP_EXPOSED * tp_comm, tp_comm - gemm)

    per_micro = gemm + attention + elementwise + tp_comm
    stage_link = gpu.ib_gb_s if tp * pp > gpu.gpus_per_node else gpu.nvlink_gb_s / 2.0
    p2p = 0.0 if pp == 1 else 2.0 * (act / tp) / (stage_link * 1e9 * NCCL_BUS_EFFICIENCY) * (layout.vpp or 1)
    busy = m * (per_micro + p2p)  # a bubble slot is a micro-batch chunk with its p2p
    bubble = (pp - 1) / ((layout.vpp or 1) * m) * busy
    counts = count_parameters(model)
    params_gpu = (counts.num_layers * counts.layer_linear / tp + counts.embedding / tp) / pp
    dp_link = gpu.nvlink_gb_s / 2.0 if layout.gpus <= gpu.gpus_per_node else gpu.ib_gb_s
    dp_total = _ring(4.0 * params_gpu, dp, dp_link) + _ring(2.0 * params_gpu, dp, dp_link)
    window = (per_micro * 2.0 / passes + per_micro / passes) if DP_OVERLAP else 0.0  # last bwd + first fwd
    dp_comm = max(0.0, dp_total - window)
    optimizer = 16.0 * params_gpu / dp * 3.0 / (gpu.hbm_gb_s * 1e9)
    job_tokens = tokens * m * dp
    flops_token = 6.0 * counts.matmul + 6.0 * model.num_layers * h * attn_length
    return StepTime(
        gemm=m * gemm,
        attention=m * attention,
        elementwise=m * elementwise,
        tp_comm=m * tp_comm,
        pp_comm=m * p2p,
        bubble=bubble,
        dp_comm=dp_comm,
        optimizer=optimizer,
        tokens_per_step=job_tokens,
        model_flops_per_step=flops_token * job_tokens,
    )


def fit_scale(observed_tokens_per_s: float, predict) -> float:
    """The efficiency ``scale`` at which ``predict(scale).tokens_per_s`` equals the observed rate.

    Step time falls monotonically as ``scale`` grows, so bisection on ``log(scale)`` finds it.
    """
    lo, hi = 1e-3, 1e3
    for _ in range(200):
        mid = (lo * hi) ** 0.5
        if predict(mid).tokens_per_s < observed_tokens_per_s:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5


# megatron-core's published 7.1B point (GPT: h 4096, 32 layers, 32 heads, MLP 4h = a SwiGLU of 2/3 x 16384).
ANCHOR_MODEL = ModelConfig(
    name="gpt_7b_anchor",
    num_layers=32,
    hidden_size=4096,
    num_attention_heads=32,
    num_query_groups=32,
    ffn_hidden_size=10923,
    vocab_size=51200,
)
ANCHOR_LAYOUT = Layout(tp=1, pp=1, dp=96, micro_batch_tokens=4096, num_micro_batches=16)
ANCHOR_MFU = 0.47
H100 = GpuSpec(nvlink_gb_s=900.0)


@functools.cache
def anchor_scale() -> float:
    """The efficiency scale at which :data:`ANCHOR_LAYOUT` runs at :data:`ANCHOR_MFU` on an H100."""
    step = predict_step(ANCHOR_MODEL, ANCHOR_LAYOUT, 4096.0, H100, 1.0)
    target = step.model_flops_per_step / (ANCHOR_MFU * ANCHOR_LAYOUT.gpus * H100.peak_tflops * 1e12)
    return fit_scale(
        step.tokens_per_step / target,
        lambda sc: predict_step(ANCHOR_MODEL, ANCHOR_LAYOUT, 4096.0, H100, sc),
    )
