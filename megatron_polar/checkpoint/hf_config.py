"""HF ``config.json`` <-> :class:`ModelConfig`: which HF models the reward model represents exactly,
the model config of one, and the ``config.json`` of each export format.

Reading (:func:`model_config_from_hf`) refuses what the trunk cannot compute the same way: biases,
activations other than SiLU, sliding windows, RoPE scaling that acts below the context limit.
Writing gives the ``llama`` (:func:`llama_config`) and ``internlm2`` (:func:`internlm2_config`) configs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_polar.checkpoint.hf_io import ConversionError
from megatron_polar.checkpoint.hf_tokenizer import TokenVocab
from megatron_polar.config import ConfigError
from megatron_polar.config.model_shape import HF_CONFIG_KEYS
from megatron_polar.config.schema import ModelConfig, PolarConfig
from megatron_polar.config.validate import validate_model
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "LlamaModel",
    "LlamaForSequenceClassification",
    "Qwen2ForCausalLM",
    "Qwen2Model",
    "Qwen2ForSequenceClassification",
    "InternLM2ForCausalLM",
    "InternLM2Model",
    "InternLM2ForRewardModel",
)
_PRECISION_OF = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAME = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _require(hf: dict, key: str, path: Path):
    if hf.get(key) is None:
        raise ConversionError(f"{path} has no {key!r}")
    return hf[key]


def _check_representable(hf: dict, path: Path) -> None:
    """Refuse configs whose computation the reward model's trunk cannot reproduce."""
    archs = hf.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ConversionError(
            f"unknown architecture {archs or None} (model_type {hf.get('model_type')!r}) in {path}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    for key in ("attention_bias", "mlp_bias", "bias"):
        if hf.get(key):
            raise ConversionError(f"{path}: {key}=true, but the reward model has no attention/MLP biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"{path}: hidden_act={hf['hidden_act']!r}, only silu (SwiGLU) is supported")
    if hf.get("use_sliding_window"):
        raise ConversionError(
            f"{path}: use_sliding_window=true is not supported (full causal attention only)"
        )
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * hf["num_attention_heads"] != hf["hidden_size"]:
        raise ConversionError(
            f"{path}: head_dim={head_dim} != hidden_size/num_attention_heads; not supported"
        )
    scaling = hf.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("default", "dynamic"):
            raise ConversionError(
                f"{path}: rope_scaling type {kind!r} changes RoPE below the context limit; only none or "
                "dynamic (a no-op up to max_position_embeddings) can be represented"
            )
        if kind == "dynamic":
            log.warning(
                "rope_scaling=dynamic dropped: it only acts past max_position_embeddings=%s tokens",
                hf.get("max_position_embeddings"),
            )
    if hf.get("tie_word_embeddings"):
        log.info(
            "tie_word_embeddings=true: fine for a reward model, which keeps the embedding and no LM head"
        )


def model_config_from_hf(
    hf: dict, path: Path, reward_token_id: int | None = None, split_token_id: int | None = None
) -> ModelConfig:
    """The :class:`ModelConfig` of an HF ``config.json`` (``path`` names it in errors)."""
    _check_representable(hf, path)
    heads = _require(hf, "num_attention_heads", path)
    model = ModelConfig(
        name=str(hf.get("_name_or_path") or path.parent.name or "imported"),
        num_layers=_require(hf, "num_hidden_layers", path),
        hidden_size=_require(hf, "hidden_size", path),
        num_attention_heads=heads,
        num_query_groups=hf.get("num_key_value_heads") or heads,
        ffn_hidden_size=_require(hf, "intermediate_size", path),
        vocab_size=_require(hf, "vocab_size", path),
        max_position_embeddings=_require(hf, "max_position_embeddings", path),
        rotary_base=float(hf.get("rope_theta", 10000.0)),
        norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        reward_token_id=reward_token_id,
        split_token_id=split_token_id,
    )
    try:
        validate_model(PolarConfig(model=model))
    except ConfigError as exc:
        raise ConversionError(f"{path}: {exc}") from exc
    return model


def model_overrides(m: ModelConfig) -> list[str]:
    """Hydra overrides that make a training run's model match ``m`` (needed with ``checkpoint.pretrained``)."""
    return [f"model.{k}={'null' if getattr(m, k) is None else getattr(m, k)}" for k in HF_CONFIG_KEYS]


def hf_precision(hf: dict, dtype: str) -> str:
    """The precision to load ``hf`` in: ``dtype``, or with ``auto`` the one its config.json records."""
    precision = (
        _PRECISION_OF.get(str(hf.get("torch_dtype") or hf.get("dtype")), "fp32") if dtype == "auto" else dtype
    )
    if precision not in TORCH_DTYPE:
        raise ConversionError(f"--dtype {dtype!r} is not one of auto, bf16, fp16, fp32")
    return precision


def llama_config(m: ModelConfig, dtype: str, pad_id: int, vocab: TokenVocab | None) -> dict:
    """config.json of the ``llama`` export (stock ``LlamaForSequenceClassification``)."""
    # transformers is an optional dependency (the ``dev`` extra, setup.py): only this export needs it.
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_query_groups,
        head_dim=m.hidden_size // m.num_attention_heads,
        max_position_embeddings=m.max_position_embeddings,
        rms_norm_eps=m.norm_epsilon,
        rope_theta=m.rotary_base,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        num_labels=1,
        problem_type="regression",  # raw score: vLLM's classify pooler applies a sigmoid otherwise
        pad_token_id=pad_id,
        bos_token_id=vocab.id_of(vocab.bos_token) if vocab else None,
        eos_token_id=vocab.id_of(vocab.eos_token) if vocab else None,
        architectures=["LlamaForSequenceClassification"],
        reward_token_id=m.reward_token_id,
        split_token_id=m.split_token_id,
    )
    out = config.to_diff_dict()
    # Newer transformers write "dtype", older ones and some engines read "torch_dtype": write both.
    out.update(dtype=DTYPE_NAME[dtype], torch_dtype=DTYPE_NAME[dtype], model_type="llama")
    return out


def internlm2_config(m: ModelConfig, dtype: str, vocab: TokenVocab | None) -> dict:
    """Config of the released POLAR checkpoints (``InternLM2ForRewardModel`` remote code).

    ``rope_scaling`` is the released dynamic x2: it changes nothing up to ``max_position_embeddings``
    (where our model is exact) and lets the remote code and the engines extrapolate past it as POLAR-7B
    does; lmdeploy also reads the key unguarded when it is present.
    """
    ids = {
        k: vocab.id_of(getattr(vocab, k)) if vocab else None for k in ("bos_token", "eos_token", "pad_token")
    }
    return {
        "architectures": ["InternLM2ForRewardModel"],
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
            "AutoModelForSequenceClassification": "modeling_internlm2.InternLM2ForRewardModel",
        },
        "model_type": "internlm2",
        "attn_implementation": "eager",
        "bias": False,
        "bos_token_id": ids["bos_token"] if ids["bos_token"] is not None else 1,
        "eos_token_id": ids["eos_token"] if ids["eos_token"] is not None else 2,
        "pad_token_id": ids["pad_token"] if ids["pad_token"] is not None else 2,
        "hidden_act": "silu",
        "hidden_size": m.hidden_size,
        "initializer_range": m.init_method_std,
        "intermediate_size": m.ffn_hidden_size,
        "max_position_embeddings": m.max_position_embeddings,
        "num_attention_heads": m.num_attention_heads,
        "num_hidden_layers": m.num_layers,
        "num_key_value_heads": m.num_query_groups,
        "pretraining_tp": 1,
        # vLLM applies a sigmoid to a pooled score unless problem_type is "regression".
        "num_labels": 1,
        "problem_type": "regression",
        "reward_token_id": m.reward_token_id,
        "split_token_id": m.split_token_id,
        "rms_norm_eps": m.norm_epsilon,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "rope_theta": m.rotary_base,
        "tie_word_embeddings": False,
        "torch_dtype": DTYPE_NAME[dtype],
        "use_cache": True,
        "vocab_size": m.vocab_size,
    }
