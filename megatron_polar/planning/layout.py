"""Resolve a process layout for a configuration and a GPU count: the :class:`Plan`.

:func:`plan_layout` is the one entry: it combines the parameter counts (:mod:`.params`), the memory
model (:mod:`.memory`) and the FLOP count (:mod:`.flops`), and lists what makes the layout invalid
(``errors``: it cannot start) or doubtful (``warnings``: it may not fit, or it will be slow).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from megatron_polar.config.schema import PolarConfig
from megatron_polar.config.validate import validate_model
from megatron_polar.planning.flops import (
    H800_PEAK_BF16_TFLOPS,
    PAPER_RUNS,
    FlopsEstimate,
    estimate_flops,
    implied_mfu,
    projected_seconds,
)
from megatron_polar.planning.memory import (
    GB,
    MemoryEstimate,
    Recompute,
    in_flight_micro_batches,
    model_state_bytes,
    stage_activation_bytes,
)
from megatron_polar.planning.params import ParamCounts, StageParams, count_parameters, stage_parameters
from megatron_polar.utils.errors import ConfigError

# A POLAR sequence is prompt + reference + candidate, each trajectory capped at 4096 tokens; with
# variable-length attention over packed rows a token attends within its own sequence only.
DEFAULT_PACKED_ATTN_LENGTH = 8192
TIGHT_FRACTION = 0.9  # warn above this share of GPU memory: the model ignores fragmentation spikes


@dataclass(frozen=True)
class Hardware:
    """The GPUs a layout is planned for (defaults: an H800 node)."""

    name: str = "H800"
    memory_gb: float = 80.0  # usable GPU memory, decimal GB
    gpus_per_node: int = 8
    peak_tflops: float = H800_PEAK_BF16_TFLOPS  # dense BF16
    nvlink_gb_s: float = 400.0  # per-GPU NVLink bandwidth (H800: 400, H100: 900)


@dataclass
class Plan:
    """A resolved layout with its memory, FLOPs, projection and the problems found."""

    model_name: str
    world_size: int
    tp: int
    pp: int
    vpp: int | None
    dp: int
    sequence_parallel: bool
    seq_length: int
    layout: str  # packed | padded
    micro_batch: int  # rows (packed) or pairs (padded), as train.micro_batch_size
    sequences_per_micro_batch: int  # rows, or 2 sequences per pair
    global_batch: int | None  # None: "auto", resolved by the trainer
    num_micro_batches: int | None  # per data-parallel rank and step
    recompute: Recompute
    flash_attention: bool
    precision: str
    distributed_optimizer: bool
    hardware: Hardware
    params: ParamCounts
    stages: list[StageParams]
    memory: list[MemoryEstimate]  # per pipeline stage, per GPU
    flops: FlopsEstimate
    attn_length: int
    mfu: float
    tokens: float | None
    projected_hours: float | None
    paper: dict | None = None  # the paper's run for this preset, compared with the projection
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def peak_memory(self) -> MemoryEstimate:
        return max(self.memory, key=lambda m: m.total)

    @property
    def peak_stage(self) -> int:
        return self.memory.index(self.peak_memory)

    @property
    def fits(self) -> bool:
        return self.peak_memory.total <= self.hardware.memory_gb * GB

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        """JSON-ready summary (bytes in GB, counts as integers)."""

        def mem(m: MemoryEstimate) -> dict:
            d = {k: round(v / GB, 3) for k, v in asdict(m).items()}
            d["total"] = round(m.total / GB, 3)
            return d

        return {
            "model": self.model_name,
            "world_size": self.world_size,
            "layout": {
                "tp": self.tp,
                "pp": self.pp,
                "vpp": self.vpp,
                "dp": self.dp,
                "sequence_parallel": self.sequence_parallel,
            },
            "batch": {
                "seq_length": self.seq_length,
                "layout": self.layout,
                "micro_batch": self.micro_batch,
                "sequences_per_micro_batch": self.sequences_per_micro_batch,
                "global_batch": self.global_batch if self.global_batch is not None else "auto",
                "num_micro_batches": self.num_micro_batches,
                "tokens_per_step": self.flops.tokens_per_step,
            },
            "recompute": asdict(self.recompute),
            "flash_attention": self.flash_attention,
            "params": {
                "total": self.params.total,
                "embedding": self.params.embedding,
                "per_layer": self.params.per_layer,
                "non_embedding": self.params.non_embedding,
                "matmul": self.params.matmul,
                "stages": [asdict(s) for s in self.stages],
            },
            "memory_gb": {
                "gpu": self.hardware.memory_gb,
                "peak_stage": self.peak_stage,
                "stages": [mem(m) for m in self.memory],
                "fits": self.fits,
            },
            "flops": {
                "dense_per_token": self.flops.dense_per_token,
                "attention_per_token": self.flops.attention_per_token,
                "model_per_token": self.flops.model_per_token,
                "hardware_per_token": self.flops.hardware_per_token,
                "model_per_step": self.flops.model_per_step,
                "attn_length": self.attn_length,
            },
            "projection": {
                "tokens": self.tokens,
                "mfu": self.mfu,
                "peak_tflops": self.hardware.peak_tflops,
                "hours": self.projected_hours,
                "paper": self.paper,
            },
            "hardware": asdict(self.hardware),
            "errors": self.errors,
            "warnings": self.warnings,
        }


def _recompute_of(cfg: PolarConfig) -> Recompute:
    m = cfg.model
    if m.recompute_granularity == "full":
        return Recompute("full", m.recompute_method or "uniform", m.recompute_num_layers or 1)
    return Recompute(m.recompute_granularity)


def plan_layout(
    cfg: PolarConfig,
    world_size: int,
    hardware: Hardware = Hardware(),
    tokens: float | None = None,
    mfu: float = 0.27,
    attn_length: int | None = None,
    flash_attention: bool | None = None,
    overhead_gb: float = 4.0,
) -> Plan:
    """Plan ``cfg`` on ``world_size`` GPUs.

    ``tokens`` defaults to the paper's token count for the POLAR presets; ``attn_length`` to the row
    length for padded rows and :data:`DEFAULT_PACKED_ATTN_LENGTH` for packed rows; ``flash_attention``
    to true unless ``model.transformer_impl`` is ``local``.
    """
    m, p, t = cfg.model, cfg.parallel, cfg.train
    tp, pp, vpp = (
        p.tensor_model_parallel_size,
        p.pipeline_model_parallel_size,
        p.virtual_pipeline_model_parallel_size,
    )
    errors: list[str] = []
    warnings: list[str] = []
    try:
        validate_model(cfg)
    except ConfigError as exc:
        errors.append(str(exc))

    model_parallel = tp * pp
    if world_size < 1 or world_size % model_parallel:
        errors.append(
            f"world size {world_size} is not a multiple of TP x PP = {tp} x {pp} = {model_parallel}"
        )
    dp = max(world_size // model_parallel, 1)

    s = cfg.data.seq_length
    seqs_per_micro = t.micro_batch_size * (2 if cfg.data.layout == "padded" else 1)
    global_batch = None if t.global_batch_size == "auto" else int(t.global_batch_size)
    num_micro = None
    if global_batch is not None:
        if global_batch % (t.micro_batch_size * dp):
            errors.append(
                f"train.global_batch_size={global_batch} is not a multiple of micro batch x DP = "
                f"{t.micro_batch_size} x {dp} = {t.micro_batch_size * dp}"
            )
        num_micro = max(global_batch // (t.micro_batch_size * dp), 1)
    if p.sequence_parallel and s % tp:
        errors.append(f"data.seq_length={s} must be divisible by TP={tp} with sequence parallelism")

    if tp > hardware.gpus_per_node:
        warnings.append(
            f"TP={tp} exceeds the {hardware.gpus_per_node} GPUs of a node: TP traffic would cross the network"
        )
    if tp > 2 and hardware.nvlink_gb_s <= 400:
        warnings.append(
            f"TP={tp} > 2 on {hardware.name} ({hardware.nvlink_gb_s:.0f} GB/s NVLink): keep TP <= 2 for models up to 7B"
        )
    if tp > 1 and not p.sequence_parallel:
        warnings.append(
            "TP > 1 without parallel.sequence_parallel: norm activations are replicated on every TP rank"
        )
    if pp >= 4 and cfg.data.layout == "packed":
        warnings.append("PP >= 4 with variable sequence lengths: batched p2p has been reported to deadlock")

    recompute = _recompute_of(cfg)
    flash = m.transformer_impl != "local" if flash_attention is None else flash_attention
    counts = count_parameters(m)
    stages = (
        stage_parameters(counts, tp, pp)
        if pp >= 1 and m.num_layers % pp == 0
        else stage_parameters(counts, tp, 1)
    )
    memory = []
    for st in stages:
        weights, grads, optim = model_state_bytes(st.per_gpu, dp, t.precision, p.use_distributed_optimizer)
        in_flight = in_flight_micro_batches(len(stages), vpp, num_micro, st.stage)
        acts = stage_activation_bytes(
            m, st.layers, s, seqs_per_micro, tp, p.sequence_parallel, recompute, in_flight, flash
        )
        memory.append(MemoryEstimate(weights, grads, optim, acts, overhead_gb * GB))

    tokens_per_step = (
        None if global_batch is None else global_batch * (seqs_per_micro // t.micro_batch_size) * s
    )
    if attn_length is None:
        attn_length = min(s, DEFAULT_PACKED_ATTN_LENGTH) if cfg.data.layout == "packed" else s
    recomputed = 0.0
    if recompute.granularity == "full":
        layers = stages[0].layers
        recomputed = min(recompute.num_layers or 1, layers) / layers if recompute.method == "block" else 1.0
    flops = estimate_flops(
        counts.matmul, m.num_layers, m.hidden_size, attn_length, True, recomputed, tokens_per_step
    )
    paper_run = PAPER_RUNS.get(m.name)
    if tokens is None and paper_run is not None:
        tokens = paper_run[1]
    hours = None
    if tokens is not None:
        hours = (
            projected_seconds(tokens, flops.model_per_token, world_size, mfu, hardware.peak_tflops) / 3600.0
        )
    paper = None
    if paper_run is not None:
        gpus, ptokens, phours = paper_run
        paper = {
            "gpus": gpus,
            "tokens": ptokens,
            "hours": phours,
            "projected_hours": projected_seconds(
                ptokens, flops.model_per_token, gpus, mfu, hardware.peak_tflops
            )
            / 3600.0,
            "implied_mfu": implied_mfu(ptokens, flops.model_per_token, gpus, phours, hardware.peak_tflops),
            "implied_mfu_6n": implied_mfu(ptokens, flops.dense_per_token, gpus, phours, hardware.peak_tflops),
        }

    plan = Plan(
        model_name=m.name,
        world_size=world_size,
        tp=tp,
        pp=pp,
        vpp=vpp,
        dp=dp,
        sequence_parallel=p.sequence_parallel,
        seq_length=s,
        layout=cfg.data.layout,
        micro_batch=t.micro_batch_size,
        sequences_per_micro_batch=seqs_per_micro,
        global_batch=global_batch,
        num_micro_batches=num_micro,
        recompute=recompute,
        flash_attention=flash,
        precision=t.precision,
        distributed_optimizer=p.use_distributed_optimizer,
        hardware=hardware,
        params=counts,
        stages=stages,
        memory=memory,
        flops=flops,
        attn_length=attn_length,
        mfu=mfu,
        tokens=tokens,
        projected_hours=hours,
        paper=paper,
        errors=errors,
        warnings=warnings,
    )
    peak = plan.peak_memory.total / GB
    if not plan.fits:
        plan.warnings.insert(
            0,
            f"does not fit: stage {plan.peak_stage} needs {peak:.1f} GB per GPU > {hardware.memory_gb:.0f} GB "
            "(enable or extend recomputation, raise TP/PP, or lower the micro batch / sequence length)",
        )
    elif peak > TIGHT_FRACTION * hardware.memory_gb:
        plan.warnings.insert(
            0, f"tight: {peak:.1f} GB of {hardware.memory_gb:.0f} GB per GPU; fragmentation may not fit"
        )
    return plan
