"""Typed configuration schema for megatron_polar.

Every Hydra preset under ``conf/`` is validated against these dataclasses, so a misspelled or unknown
key fails at start-up with the key's name. Fields that accept the string ``"auto"`` as well as a
number are typed ``Any`` (OmegaConf has no unions) and checked in :func:`validate`.

Fields with a fixed set of values name an :class:`~enum.Enum` below (:func:`one_of`); the field itself
stays a plain string in YAML, in saved checkpoints and in code, and ``config/validate.py`` checks it
against the enum, so the allowed values are written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore


class TransformerImpl(Enum):
    AUTO = "auto"  # Transformer Engine when it imports and works, else the local spec
    TRANSFORMER_ENGINE = "transformer_engine"
    LOCAL = "local"


class RecomputeGranularity(Enum):
    SELECTIVE = "selective"
    FULL = "full"


class RecomputeMethod(Enum):
    UNIFORM = "uniform"
    BLOCK = "block"


class Fp8Format(Enum):
    E4M3 = "e4m3"
    HYBRID = "hybrid"


class Fp8Recipe(Enum):
    DELAYED = "delayed"
    TENSORWISE = "tensorwise"
    BLOCKWISE = "blockwise"
    MXFP8 = "mxfp8"


class Fp8AmaxAlgo(Enum):
    MAX = "max"
    MOST_RECENT = "most_recent"


class Backend(Enum):
    AUTO = "auto"
    NCCL = "nccl"
    GLOO = "gloo"


class DataLayout(Enum):
    PACKED = "packed"
    PADDED = "padded"


class Stage(Enum):
    PRETRAIN = "pretrain"
    SFT = "sft"


class Precision(Enum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class NanPolicy(Enum):
    SKIP = "skip"
    STOP = "stop"


class WandbMode(Enum):
    DISABLED = "disabled"
    OFFLINE = "offline"
    ONLINE = "online"


def values(enum: type[Enum]) -> tuple[str, ...]:
    """The string values of ``enum``, in declaration order."""
    return tuple(member.value for member in enum)


def one_of(enum: type[Enum], default: str | None, *, optional: bool = False) -> Any:
    """A string field whose value must be one of ``enum``'s (or null when ``optional``)."""
    allowed = ((None,) if optional else ()) + values(enum)
    if default not in allowed:
        raise ValueError(f"default {default!r} is not one of {list(allowed)}")
    return field(default=default, metadata={"choices": allowed})


def choices_of(section: type) -> dict[str, tuple[str | None, ...]]:
    """``{field name: allowed values}`` of the :func:`one_of` fields of a config dataclass."""
    return {f.name: f.metadata["choices"] for f in fields(section) if "choices" in f.metadata}


@dataclass
class ModelConfig:
    """Shape of the decoder trunk and the POLAR special tokens."""

    name: str = "tiny"  # preset name, recorded in checkpoints and exports
    num_layers: int = 2  # transformer layers
    hidden_size: int = 64  # model width
    num_attention_heads: int = 4  # query heads
    num_query_groups: int = 2  # key/value heads (GQA); equal to heads for plain MHA
    ffn_hidden_size: int = 128  # SwiGLU inner width
    vocab_size: int = 512  # embedding rows (padded vocabulary of the tokenizer)
    max_position_embeddings: int = 4096  # longest sequence the RoPE table is built for
    rotary_base: float = 10000.0  # RoPE theta (InternLM2.5 / POLAR-7B: 5e7)
    norm_epsilon: float = 1e-5  # RMSNorm epsilon
    init_method_std: float = 0.02  # std of the normal weight initialisation
    reward_token_id: int | None = None  # token whose hidden state is scored; null: from the data
    split_token_id: int | None = None  # token between reference and candidate; null: from the data
    transformer_impl: str = one_of(
        TransformerImpl, "auto"
    )  # auto | transformer_engine | local (auto: TE when it imports)
    recompute_granularity: str | None = one_of(
        RecomputeGranularity, None, optional=True
    )  # null | selective | full
    recompute_method: str | None = one_of(
        RecomputeMethod, None, optional=True
    )  # uniform | block (with full recomputation)
    recompute_num_layers: int | None = None  # layers per recompute chunk (full recomputation)
    fp8: str | None = one_of(Fp8Format, None, optional=True)  # null | e4m3 | hybrid (Transformer Engine only)
    fp8_recipe: str = one_of(Fp8Recipe, "delayed")  # delayed | tensorwise | blockwise | mxfp8
    fp8_amax_history_len: int = 1024  # amax history window for delayed scaling
    fp8_amax_compute_algo: str = one_of(Fp8AmaxAlgo, "max")  # max | most_recent
    fp8_margin: int = 0  # scaling-factor margin
    base_model_tokens: float | None = None  # tokens the base LLM saw (Dp), for "auto" lr/batch


@dataclass
class ParallelConfig:
    """Process layout. Data parallel size is what is left of the world size."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: int | None = None  # interleaved schedule chunks
    sequence_parallel: bool = False  # shard activations along the sequence inside TP regions
    use_distributed_optimizer: bool = True  # shard optimizer state across data-parallel ranks
    overlap_grad_reduce: bool = True  # overlap the gradient reduce-scatter with backward
    overlap_param_gather: bool = False  # overlap the parameter all-gather with forward
    backend: str = one_of(Backend, "auto")  # auto | nccl | gloo (auto: nccl with GPUs, gloo on CPU)
    distributed_timeout_minutes: int = 10  # collective timeout before a hang is reported


@dataclass
class DatasetSpec:
    """One indexed pair dataset and its blending weight."""

    path: str = "???"  # dataset prefix (``<path>.bin``, ``<path>.idx``, ``<path>.manifest.json``)
    weight: float = 1.0  # relative sampling weight in the blend


@dataclass
class DataConfig:
    """Where pairs come from and how they are laid out in a batch."""

    train: list[DatasetSpec] = field(default_factory=list)  # blended training datasets
    valid: list[DatasetSpec] = field(default_factory=list)  # validation datasets (e.g. held-out policies)
    valid_fraction: float = 0.0  # carve validation pairs off the training data when `valid` is empty
    seq_length: int = 1024  # tokens per row (packed) or longest sequence (padded)
    # packed: many pairs per row, no cross-attention | padded: one sequence per row
    layout: str = one_of(DataLayout, "packed")
    pack_window: int = 65536  # pairs packed together (rows never mix windows; larger packs tighter)
    share_prefix: bool = True  # one segment group per pair: prefix | chosen suffix | rejected suffix
    seed: int = 1234  # shuffle and packing seed
    plan_dir: str | None = None  # shared epoch plans (order + packing), built once; null: <run_dir>/plans
    plan_workers: int = 0  # processes rank 0 packs a plan with; 0: SLURM cpus-per-task / its CPU affinity
    prefetch: bool = True  # build the next step's batches in a background thread during the current step


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (the released POLAR settings)."""

    lr: Any = 2e-5  # peak learning rate, or "auto" for the paper's scaling law
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_fraction: float = 0.03  # share of the run spent warming up
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # global gradient-norm clip (0 disables)


@dataclass
class TrainConfig:
    """Schedule, precision and failure policy of one stage."""

    stage: str = one_of(Stage, "pretrain")  # pretrain | sft (sets defaults only; both use the same loss)
    global_batch_size: Any = 16  # pairs (padded) or rows (packed) per step, or "auto"
    micro_batch_size: int = 1  # pairs (padded) or rows (packed) per forward pass
    train_iters: int | None = None  # optimizer steps; null: one epoch over the training data
    eval_interval: int = 100  # steps between validations (0: only at the end)
    eval_iters: int | None = None  # validation batches; null: the whole validation set
    precision: str = one_of(Precision, "bf16")  # bf16 | fp16 | fp32
    seed: int = 1234  # model initialisation seed
    nan_policy: str = one_of(NanPolicy, "skip")  # skip: drop the step's update | stop: save nothing and exit
    exit_after_iters: int | None = None  # stop cleanly (with a save) after this many steps
    deterministic: bool = False  # bitwise-reproducible kernels where available
    rm_tokens: float | None = None  # RM training tokens (Drm), input of the "auto" scaling laws


@dataclass
class CheckpointConfig:
    """megatron-core dist_checkpointing saves and resume."""

    dir: str | None = None  # where checkpoints go; null: <run_dir>/checkpoints
    save_interval: int = 1000  # steps between saves (0: only at the end)
    keep_last: int = 3  # complete checkpoints kept; older ones are deleted
    resume: bool = True  # resume from the newest complete checkpoint in `dir`
    pretrained: str | None = None  # weights-only start (SFT from a pre-trained RM, or an import)
    save_optimizer: bool = True  # include optimizer and scheduler state


@dataclass
class LoggingConfig:
    """Console, metrics.jsonl, TensorBoard and wandb."""

    run_dir: str = "runs/default"  # metrics.jsonl, tensorboard/ and checkpoints/ live here
    log_interval: int = 10  # steps between log lines
    tensorboard: bool = True
    wandb_mode: str = one_of(WandbMode, "disabled")  # disabled | offline | online
    wandb_project: str = "megatron_polar"
    wandb_name: str | None = None
    level: str = "INFO"


@dataclass
class PolarConfig:
    """Root of the configuration tree."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def register_configs() -> None:
    """Register the schema so that ``conf/config.yaml`` is validated against it."""
    cs = ConfigStore.instance()
    cs.store(name="polar_schema", node=PolarConfig)
    cs.store(group="model", name="schema", node=ModelConfig)
    cs.store(group="parallel", name="schema", node=ParallelConfig)
    cs.store(group="data", name="schema", node=DataConfig)
    cs.store(group="optim", name="schema", node=OptimConfig)
    cs.store(group="stage", name="schema", node=TrainConfig)
    cs.store(group="checkpoint", name="schema", node=CheckpointConfig)
    cs.store(group="logging", name="schema", node=LoggingConfig)
