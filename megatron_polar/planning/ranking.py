"""Rank process layouts (TP x PP x VPP x DP x recompute) for a GPU count by predicted throughput.

Every candidate must start (:func:`~megatron_polar.planning.layout.plan_layout` finds no error) and fit
the GPU memory; the survivors are ordered by the processed tokens per second that
:func:`~megatron_polar.planning.performance.predict_step` predicts.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from megatron_polar.config.schema import PolarConfig
from megatron_polar.planning.layout import Hardware, Plan, plan_layout
from megatron_polar.planning.performance import GpuSpec, Layout, StepTime, predict_step

TP_CHOICES = (1, 2, 4, 8)
PP_CHOICES = (1, 2, 4, 8)
VPP_CHOICES = (None, 2, 4)
RECOMPUTE_CHOICES = ("none", "selective", "full")


@dataclass
class Ranked:
    """A candidate with its memory plan and predicted step."""

    layout: Layout
    plan: Plan
    step: StepTime

    @property
    def tokens_per_s(self) -> float:
        return self.step.tokens_per_s


def layout_of(
    plan: Plan, global_rows: int | None, fp8: bool = False, tp_comm_overlap: bool = False
) -> Layout:
    """The :class:`Layout` a resolved plan describes (``global_rows`` when its global batch is "auto")."""
    rec = plan.recompute
    fraction = 1.0
    if rec.granularity == "full" and rec.method == "block":
        layers = plan.stages[0].layers
        fraction = min(rec.num_layers or 1, layers) / layers
    micro_tokens = plan.sequences_per_micro_batch * plan.seq_length
    m = plan.num_micro_batches
    if m is None:
        m = max(1, math.ceil((global_rows or plan.dp) / (plan.micro_batch * plan.dp)))
    return Layout(
        tp=plan.tp,
        pp=plan.pp,
        vpp=plan.vpp,
        dp=plan.dp,
        sequence_parallel=plan.sequence_parallel,
        recompute=rec.granularity or "none",
        recompute_fraction=fraction,
        micro_batch_tokens=micro_tokens,
        num_micro_batches=m,
        fp8=fp8,
        tp_comm_overlap=tp_comm_overlap,
    )


def _variant(
    cfg: PolarConfig, tp: int, pp: int, vpp: int | None, recompute: str, global_rows: int, dp: int
) -> PolarConfig:
    c = copy.deepcopy(cfg)
    c.parallel.tensor_model_parallel_size = tp
    c.parallel.pipeline_model_parallel_size = pp
    c.parallel.virtual_pipeline_model_parallel_size = vpp
    c.parallel.sequence_parallel = tp > 1
    c.model.recompute_granularity = None if recompute == "none" else recompute
    c.model.recompute_method = "uniform" if recompute == "full" else None
    c.model.recompute_num_layers = 1 if recompute == "full" else None
    per = c.train.micro_batch_size * dp
    c.train.global_batch_size = max(1, math.ceil(global_rows / per)) * per
    return c


def rank_layouts(
    cfg: PolarConfig,
    gpus: int,
    hardware: Hardware,
    gpu: GpuSpec,
    attn_length: float,
    global_rows: int,
    scale: float | None = None,
    fp8: bool = False,
    tp_comm_overlap: bool = False,
    overhead_gb: float = 4.0,
) -> list[Ranked]:
    """Every valid layout of ``cfg``'s model on ``gpus`` GPUs that fits, fastest first.

    ``global_rows`` is the global batch in samples (packed rows); each candidate rounds it up to a
    multiple of its micro batch x DP.
    """
    m = cfg.model
    out: list[Ranked] = []
    for tp in TP_CHOICES:
        if tp > hardware.gpus_per_node or m.num_attention_heads % tp or m.num_query_groups % tp:
            continue
        for pp in PP_CHOICES:
            if m.num_layers % pp or gpus % (tp * pp):
                continue
            for vpp in VPP_CHOICES:
                if vpp is not None and (pp == 1 or (m.num_layers // pp) % vpp):
                    continue
                for recompute in RECOMPUTE_CHOICES:
                    c = _variant(cfg, tp, pp, vpp, recompute, global_rows, gpus // (tp * pp))
                    plan = plan_layout(
                        c, gpus, hardware, attn_length=round(attn_length), overhead_gb=overhead_gb
                    )
                    if plan.errors or not plan.fits:
                        continue
                    layout = layout_of(plan, global_rows, fp8, tp_comm_overlap)
                    out.append(Ranked(layout, plan, predict_step(m, layout, attn_length, gpu, scale)))
    out.sort(key=lambda r: r.tokens_per_s, reverse=True)
    return out


def format_ranking(
    ranked: list[Ranked], gpus: int, peak_tflops: float, tokens: float | None, top: int
) -> str:
    """A table of the ``top`` layouts: throughput, MFU, time breakdown, memory and projected hours."""
    head = (
        f"{'#':>3}  {'layout':<34}{'micro':>6}{'tok/s/GPU':>11}{'MFU':>7}{'step s':>8}"
        f"{'gemm':>7}{'attn':>7}{'tp':>6}{'bubble':>7}{'dp':>6}{'mem GB':>8}{'hours':>9}"
    )
    lines = [head]
    for i, r in enumerate(ranked[:top], 1):
        st = r.step
        hours = "" if tokens is None else f"{tokens / st.tokens_per_s / 3600:9.1f}"
        lines.append(
            f"{i:>3}  {r.layout.label():<34}{r.layout.num_micro_batches:>6}{st.tokens_per_s / gpus:>11.0f}"
            f"{st.mfu(gpus, peak_tflops):>7.1%}{st.total:>8.2f}{st.gemm / st.total:>7.0%}"
            f"{st.attention / st.total:>7.0%}{st.tp_comm / st.total:>6.0%}{st.bubble / st.total:>7.0%}"
            f"{st.dp_comm / st.total:>6.0%}{r.plan.peak_memory.total / 1e9:>8.1f}{hours}"
        )
    if not ranked:
        lines.append("  (no layout starts and fits)")
    return "\n".join(lines)
