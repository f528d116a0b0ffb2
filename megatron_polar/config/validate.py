"""Checks that catch a configuration that cannot run before any process group is created."""

from __future__ import annotations

from dataclasses import fields, is_dataclass

from megatron_polar.config.schema import PolarConfig, choices_of
from megatron_polar.utils.errors import ConfigError


def _choices(cfg: PolarConfig) -> dict[str, tuple[str | None, ...]]:
    """``{"section.field": allowed values}`` from the schema's enums (:func:`one_of`), in schema order."""
    out: dict[str, tuple[str | None, ...]] = {}
    for section in fields(cfg):
        value = getattr(cfg, section.name)
        if is_dataclass(value):
            for name, allowed in choices_of(type(value)).items():
                out[f"{section.name}.{name}"] = allowed
    return out


def _get(cfg: PolarConfig, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _auto_or_positive(value, key: str, kind: type) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key} must be a positive number or 'auto', got {value!r}")
    if kind is int and int(value) != value:
        raise ConfigError(f"{key} must be an integer or 'auto', got {value!r}")


def validate_model(cfg: PolarConfig) -> None:
    """Shape checks that do not depend on the world size."""
    m, p = cfg.model, cfg.parallel
    if m.num_attention_heads % m.num_query_groups:
        raise ConfigError(
            f"model.num_query_groups={m.num_query_groups} must divide "
            f"model.num_attention_heads={m.num_attention_heads}"
        )
    if m.hidden_size % m.num_attention_heads:
        raise ConfigError(
            f"model.hidden_size={m.hidden_size} must be a multiple of "
            f"model.num_attention_heads={m.num_attention_heads}"
        )
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if tp < 1 or pp < 1:
        raise ConfigError("parallel.tensor_model_parallel_size and pipeline_model_parallel_size must be >= 1")
    if m.num_attention_heads % tp or m.num_query_groups % tp:
        raise ConfigError(
            f"parallel.tensor_model_parallel_size={tp} must divide model.num_attention_heads="
            f"{m.num_attention_heads} and model.num_query_groups={m.num_query_groups}; "
            f"choose a TP size from {[d for d in range(1, m.num_query_groups + 1) if m.num_query_groups % d == 0]}"
        )
    if m.ffn_hidden_size % tp:
        raise ConfigError(
            f"parallel.tensor_model_parallel_size={tp} must divide model.ffn_hidden_size={m.ffn_hidden_size}"
        )
    chunks = pp * (p.virtual_pipeline_model_parallel_size or 1)
    if m.num_layers % chunks:
        raise ConfigError(
            f"model.num_layers={m.num_layers} must be divisible by parallel.pipeline_model_parallel_size={pp}"
            + (
                f" x parallel.virtual_pipeline_model_parallel_size={p.virtual_pipeline_model_parallel_size}"
                if p.virtual_pipeline_model_parallel_size
                else ""
            )
        )
    if p.virtual_pipeline_model_parallel_size and pp < 2:
        raise ConfigError(
            "parallel.virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size >= 2"
        )
    if p.sequence_parallel and tp == 1:
        raise ConfigError("parallel.sequence_parallel needs parallel.tensor_model_parallel_size > 1")
    for key in ("reward_token_id", "split_token_id"):
        tok = getattr(m, key)
        if tok is not None and not 0 <= tok < m.vocab_size:
            raise ConfigError(
                f"model.{key}={tok} is outside the vocabulary [0, model.vocab_size={m.vocab_size})"
            )
    if m.recompute_granularity == "full" and m.recompute_method is None:
        raise ConfigError("model.recompute_granularity=full needs model.recompute_method (uniform or block)")
    if m.fp8 is not None and cfg.train.precision == "fp32":
        raise ConfigError("model.fp8 needs train.precision=bf16 (or fp16)")
    if m.fp8 is not None and m.transformer_impl == "local":
        raise ConfigError("model.fp8 needs model.transformer_impl=transformer_engine or auto")
    if m.fp8 is not None:
        validate_fp8_dims(cfg)


def fp8_gemm_dims(cfg: PolarConfig) -> dict[str, int]:
    """Every GEMM dimension this rank's FP8 layers see, by the config key that sets it."""
    m, tp = cfg.model, cfg.parallel.tensor_model_parallel_size
    head_dim = m.hidden_size // m.num_attention_heads
    return {
        "model.hidden_size": m.hidden_size,
        "model.ffn_hidden_size / parallel.tensor_model_parallel_size": m.ffn_hidden_size // tp,
        "model.num_attention_heads x head_dim / parallel.tensor_model_parallel_size": (
            m.num_attention_heads * head_dim // tp
        ),
        "(model.num_attention_heads + 2 x model.num_query_groups) x head_dim / "
        "parallel.tensor_model_parallel_size": (m.num_attention_heads + 2 * m.num_query_groups)
        * head_dim
        // tp,
        "data.seq_length": cfg.data.seq_length,
    }


def validate_fp8_dims(cfg: PolarConfig) -> None:
    """FP8 GEMMs need every dimension a multiple of 16 (Transformer Engine raises at the first forward
    otherwise: transformer_engine/pytorch/utils.py:609-624, last dim % 16, leading dims % 8)."""
    bad = {key: value for key, value in fp8_gemm_dims(cfg).items() if value % 16}
    if bad:
        raise ConfigError(
            "model.fp8 needs GEMM dimensions that are multiples of 16: "
            + "; ".join(f"{key} = {value}" for key, value in bad.items())
        )


def validate_fp8_hardware(cfg: PolarConfig, capability: tuple[int, int]) -> None:
    """Reject an FP8 recipe the GPU cannot run, before any model is built.

    MXFP8 needs compute capability 10.x (Blackwell); H100/H800 are 9.0 (Transformer Engine:
    transformer_engine/pytorch/quantization.py:162-168).
    """
    m = cfg.model
    if m.fp8 is not None and m.fp8_recipe == "mxfp8" and not (10, 0) <= tuple(capability) < (12, 0):
        raise ConfigError(
            f"model.fp8_recipe=mxfp8 needs a GPU of compute capability 10.x (Blackwell); this one is "
            f"sm{capability[0]}{capability[1]}: use model.fp8_recipe=delayed or tensorwise"
        )


def validate(cfg: PolarConfig) -> None:
    """Raise :class:`ConfigError` naming the key of the first problem found."""
    for key, choices in _choices(cfg).items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")
    validate_model(cfg)
    _auto_or_positive(cfg.optim.lr, "optim.lr", float)
    _auto_or_positive(cfg.train.global_batch_size, "train.global_batch_size", int)
    if cfg.train.micro_batch_size < 1:
        raise ConfigError("train.micro_batch_size must be >= 1")
    if not 0 <= cfg.optim.warmup_fraction < 1:
        raise ConfigError("optim.warmup_fraction must be in [0, 1)")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ConfigError("optim.min_lr_ratio must be in [0, 1]")
    if not 0 <= cfg.data.valid_fraction < 1:
        raise ConfigError("data.valid_fraction must be in [0, 1)")
    if cfg.data.seq_length < 8 or cfg.data.seq_length > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.seq_length={cfg.data.seq_length} must be in [8, model.max_position_embeddings="
            f"{cfg.model.max_position_embeddings}]"
        )
    if cfg.data.pack_window < 1:
        raise ConfigError(f"data.pack_window must be >= 1, got {cfg.data.pack_window}")
    if cfg.data.plan_workers < 0:
        raise ConfigError(f"data.plan_workers must be >= 0 (0: automatic), got {cfg.data.plan_workers}")
    if not isinstance(cfg.data.share_prefix, bool):
        raise ConfigError(f"data.share_prefix must be true or false, got {cfg.data.share_prefix!r}")
    if cfg.train.eval_iters is not None and cfg.train.eval_iters < 1:
        raise ConfigError(
            f"train.eval_iters must be >= 1 or null (the whole validation set), got {cfg.train.eval_iters}"
        )
    for i, spec in enumerate(cfg.data.train + cfg.data.valid):
        if spec.weight <= 0:
            raise ConfigError(f"data.train/valid[{i}].weight must be > 0, got {spec.weight}")
