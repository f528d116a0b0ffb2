"""Render a :class:`Plan` as a table for people, one ``key=value`` line for scripts, or JSON."""

from __future__ import annotations

import json

from megatron_polar.planning.layout import Plan
from megatron_polar.planning.memory import GB


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _recompute(plan: Plan) -> str:
    r = plan.recompute
    if r.granularity == "full":
        return f"full/{r.method}/{r.num_layers}"
    return r.granularity or "none"


def format_brief(plan: Plan) -> str:
    """One ``key=value`` line (what the launch scripts print), then ``warning:``/``error:`` lines."""
    mem = plan.peak_memory.total / GB
    fields = [
        f"world={plan.world_size}",
        f"TP={plan.tp}",
        f"PP={plan.pp}",
        f"VPP={plan.vpp or 1}",
        f"DP={plan.dp}",
        f"SP={'on' if plan.sequence_parallel else 'off'}",
        f"seq={plan.seq_length}",
        f"layout={plan.layout}",
        f"micro={plan.micro_batch}",
        f"global={plan.global_batch if plan.global_batch is not None else 'auto'}",
        f"global_multiple_of={plan.micro_batch * plan.dp}",
        f"recompute={_recompute(plan)}",
        f"params={_count(plan.params.total)}",
        f"mem_gb={mem:.1f}/{plan.hardware.memory_gb:.0f}",
        f"fits={'yes' if plan.fits else 'no'}",
    ]
    lines = ["layout: " + " ".join(fields)]
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"error: {e}" for e in plan.errors]
    return "\n".join(lines)


def format_json(plan: Plan) -> str:
    return json.dumps(plan.to_dict(), indent=2)


def format_table(plan: Plan) -> str:
    """The full, readable report."""
    hw = plan.hardware
    out: list[str] = []

    def row(key: str, value: str) -> None:
        out.append(f"  {key:<30} {value}")

    out.append(f"POLAR reward model {plan.model_name} on {plan.world_size} x {hw.name}")
    out.append("layout")
    nodes = -(-plan.world_size // hw.gpus_per_node)
    row("GPUs", f"{plan.world_size} ({nodes} nodes x {hw.gpus_per_node})")
    row("TP x PP x DP", f"{plan.tp} x {plan.pp} x {plan.dp}" + (f" (VPP {plan.vpp})" if plan.vpp else ""))
    row("sequence parallel", "on" if plan.sequence_parallel else "off")
    row("sequence length", f"{plan.seq_length} ({plan.layout})")
    unit = "rows" if plan.layout == "packed" else "pairs"
    row("micro batch", f"{plan.micro_batch} {unit} = {plan.sequences_per_micro_batch} sequences")
    if plan.global_batch is None:
        row("global batch", f"auto (resolved by the trainer; a multiple of {plan.micro_batch * plan.dp})")
    else:
        row(
            "global batch", f"{plan.global_batch} {unit} = {plan.num_micro_batches} micro-batches per DP rank"
        )
    row("recompute", _recompute(plan) + ("" if plan.flash_attention else " (no flash attention)"))

    pc = plan.params
    out.append("parameters")
    row("total", f"{pc.total:,} ({_count(pc.total)})")
    row("embedding (V x h)", f"{pc.embedding:,}")
    row("per layer", f"{pc.per_layer:,} (norms {pc.layer_norms:,}, linear {pc.layer_linear:,})")
    row("final norm + reward head", f"{pc.final_norm:,} + {pc.head:,}")
    row("in matmuls (N of 6N)", f"{pc.matmul:,}")
    for st in plan.stages:
        what = ", ".join(x for x, on in (("embedding", st.has_embedding), ("head", st.has_head)) if on)
        row(
            f"stage {st.stage} ({st.layers} layers{', ' + what if what else ''})",
            f"{st.total:,}; {st.per_gpu:,} per GPU",
        )

    out.append(f"memory per GPU, GB (1e9 B; {hw.memory_gb:.0f} GB available)")
    header = f"  {'stage':<8}{'weights':>9}{'grads':>9}{'optim':>9}{'activ.':>9}{'other':>9}{'total':>9}"
    out.append(header)
    for st, m in zip(plan.stages, plan.memory):
        vals = (m.weights, m.gradients, m.optimizer, m.activations, m.overhead, m.total)
        out.append(f"  {st.stage:<8}" + "".join(f"{v / GB:>9.2f}" for v in vals))
    row(
        "fits",
        f"{'yes' if plan.fits else 'NO'} (peak: stage {plan.peak_stage}, {plan.peak_memory.total / GB:.1f} GB)",
    )

    f = plan.flops
    out.append("compute")
    row("dense FLOPs / token (6N)", f"{f.dense_per_token:.3e}")
    row(
        "attention FLOPs / token", f"{f.attention_per_token:.3e} (causal, attended length {plan.attn_length})"
    )
    row(
        "model FLOPs / token", f"{f.model_per_token:.3e} (hardware {f.hardware_per_token:.3e} with recompute)"
    )
    if f.tokens_per_step is not None:
        row("tokens / step", f"{f.tokens_per_step:,}")
        row("model FLOPs / step", f"{f.model_per_step:.3e}")
    if plan.tokens is not None and plan.projected_hours is not None:
        row(
            "projected time",
            f"{plan.projected_hours:,.1f} h for {plan.tokens:.3g} tokens at MFU {plan.mfu:.0%} "
            f"of {hw.peak_tflops:.0f} TFLOP/s",
        )
    if plan.paper is not None:
        pp = plan.paper
        row(
            "paper",
            f"{pp['hours']:.0f} h for {pp['tokens']:.3g} tokens on {pp['gpus']} GPUs; "
            f"projected here {pp['projected_hours']:,.1f} h at MFU {plan.mfu:.0%}",
        )
        row(
            "paper's implied MFU",
            f"{pp['implied_mfu']:.1%} (model FLOPs), {pp['implied_mfu_6n']:.1%} (6N only)",
        )
    for w in plan.warnings:
        out.append(f"WARNING: {w}")
    for e in plan.errors:
        out.append(f"ERROR: {e}")
    return "\n".join(out)
