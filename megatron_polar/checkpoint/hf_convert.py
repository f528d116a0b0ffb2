"""Convert between HF checkpoints and megatron_polar checkpoints.

* :func:`import_hf` reads a Llama-layout or InternLM2-layout safetensors directory, checks that the
  reward model can represent it exactly, and writes a megatron_polar checkpoint (``iter_0000000``) that
  training starts from with ``checkpoint.pretrained=<root>``. A dist_checkpointing checkpoint loads at
  any TP/PP layout, so one import serves every training layout.
* :func:`export_hf` loads a checkpoint saved at any layout into one process and streams it, tensor by
  tensor, into HF safetensors shards in the ``llama`` (``LlamaForSequenceClassification``, stock
  transformers / vLLM / SGLang) or ``internlm2`` (``InternLM2ForRewardModel``, the released POLAR format)
  layout, with ``config.json``, the tokenizer files (:mod:`hf_tokenizer`) and, for ``internlm2``, this
  project's remote code (:mod:`remote_code`), into a temporary directory renamed into place at the end.

Choices: the LM head of a causal LM is dropped (the reward model has none), so tied embeddings import
fine. A source without a reward head (``score.weight`` / ``v_head.weight``) gets a zero head by default:
every reward starts at exactly 0, the Bradley-Terry loss starts at log 2 and the first step moves the
head along the chosen-minus-rejected hidden-state difference; ``head_init="normal"`` draws it from
N(0, 1/hidden) instead.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from megatron_polar.checkpoint import manager
from megatron_polar.checkpoint.hf_io import (
    ConversionError,
    SafetensorsReader,
    ShardedSafetensorsWriter,
    atomic_directory,
    check_target,
    parse_size,
    read_json,
    write_json,
)
from megatron_polar.checkpoint.hf_layouts import (
    LAYOUTS,
    HFLayout,
    TrunkShape,
    detect_layout,
    resolve_mcore_name,
)
from megatron_polar.checkpoint.hf_tokenizer import (
    TOKENIZER_FILES,
    TokenVocab,
    export_tokenizer,
    resolve_token,
)
from megatron_polar.checkpoint.remote_code import REMOTE_CODE_DIR, REMOTE_CODE_FILES
from megatron_polar.config import ConfigError, to_yaml
from megatron_polar.config.schema import ModelConfig, PolarConfig, TrainConfig
from megatron_polar.config.validate import validate_model
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

__all__ = [
    "ConversionError",
    "export_hf",
    "import_hf",
    "load_hf_model",
    "model_config_from_hf",
    "model_overrides",
]

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
_TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAME = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


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
    keys = (
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "num_query_groups",
        "ffn_hidden_size",
        "vocab_size",
        "max_position_embeddings",
        "rotary_base",
        "norm_epsilon",
        "reward_token_id",
        "split_token_id",
    )
    return [f"model.{k}={'null' if getattr(m, k) is None else getattr(m, k)}" for k in keys]


def _expected_hf_names(layout: HFLayout, shape: TrunkShape) -> set[str]:
    return {name for name, _ in layout.from_mcore(shape, lambda n: None)}  # thunks are never called


def _check_tensor_names(reader: SafetensorsReader, layout: HFLayout, shape: TrunkShape) -> None:
    names = reader.names()
    biases = sorted(n for n in names if n.endswith(".bias"))
    if biases:
        raise ConversionError(
            f"tensor {biases[0]} in {reader.dir} is a bias ({len(biases)} bias tensors); the reward model "
            "has no attention/MLP biases (e.g. Qwen2's q/k/v biases) and cannot represent them"
        )
    known = _expected_hf_names(layout, shape) | set(layout.head_names) | {layout.lm_head}
    unexpected = sorted(n for n in names - known if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ConversionError(
            f"{len(unexpected)} tensors of {reader.dir} do not fit the {layout.name} layout of a "
            f"{shape.num_layers}-layer model, e.g. {unexpected[:3]}"
        )


def _source_vocab(hf_dir: Path, tokenizer: str | Path | None) -> TokenVocab | None:
    if tokenizer is not None:
        tok = Path(tokenizer)
        return TokenVocab(tok if tok.is_dir() else tok.parent)
    if any((hf_dir / f).is_file() for f in TOKENIZER_FILES[:3]):
        return TokenVocab(hf_dir)
    return None


def _open_hf(
    hf_dir: Path,
    reward_token: str | int | None = None,
    split_token: str | int | None = None,
    tokenizer: str | Path | None = None,
) -> tuple[dict, SafetensorsReader, HFLayout, ModelConfig]:
    """Read and check an HF directory: (config.json, tensor reader, weight layout, model config)."""
    hf = read_json(hf_dir / "config.json")
    reader = SafetensorsReader(hf_dir)
    layout = detect_layout(reader.names())
    if layout is None:
        raise ConversionError(
            f"{hf_dir} has neither model.embed_tokens.weight (Llama layout) nor model.tok_embeddings.weight "
            "(InternLM2 layout)"
        )
    needs_lookup = any(
        t is not None and not str(t).lstrip("-").isdigit() for t in (reward_token, split_token)
    )
    vocab = _source_vocab(hf_dir, tokenizer) if needs_lookup else None
    reward_id = resolve_token(reward_token, vocab, "reward-token")
    split_id = resolve_token(split_token, vocab, "split-token")
    model_cfg = model_config_from_hf(
        hf,
        hf_dir / "config.json",
        reward_id if reward_id is not None else hf.get("reward_token_id"),
        split_id if split_id is not None else hf.get("split_token_id"),
    )
    _check_tensor_names(reader, layout, TrunkShape.of(model_cfg))
    return hf, reader, layout, model_cfg


def _hf_precision(hf: dict, dtype: str) -> str:
    precision = (
        _PRECISION_OF.get(str(hf.get("torch_dtype") or hf.get("dtype")), "fp32") if dtype == "auto" else dtype
    )
    if precision not in _TORCH_DTYPE:
        raise ConversionError(f"--dtype {dtype!r} is not one of auto, bf16, fp16, fp32")
    return precision


@torch.no_grad()
def _copy_hf_weights(
    model, reader: SafetensorsReader, layout: HFLayout, shape: TrunkShape, head_init: str, seed: int
) -> str | None:
    """Fill ``model`` (a full single-process model) from ``reader``; return the reward head's HF name."""
    params = dict(model.named_parameters())
    for name, build in layout.to_mcore(shape, reader.get):
        param = params[resolve_mcore_name(name, params)]
        param.copy_(build())
    head = next((h for h in layout.head_names if h in reader.names()), None)
    if head is not None:
        model.reward_head.weight.copy_(reader.get(head, (1, shape.hidden_size)))
    elif head_init == "normal":
        gen = torch.Generator().manual_seed(seed)
        std = 1.0 / math.sqrt(shape.hidden_size)
        model.reward_head.weight.copy_(torch.randn(1, shape.hidden_size, generator=gen) * std)
    else:
        model.reward_head.weight.zero_()
    return head


def _single_process_cfg(model_cfg: ModelConfig, precision: str, seed: int, device: str) -> PolarConfig:
    from megatron_polar.model.standalone import single_process_config

    cfg = PolarConfig(model=model_cfg, train=TrainConfig(precision=precision, seed=seed))
    cfg = single_process_config(cfg)
    return replace(cfg, parallel=replace(cfg.parallel, backend="gloo" if device == "cpu" else "auto"))


@torch.no_grad()
def import_hf(
    hf_dir: str | Path,
    output: str | Path,
    *,
    reward_token: str | int | None = None,
    split_token: str | int | None = None,
    tokenizer: str | Path | None = None,
    head_init: str = "zeros",
    dtype: str = "auto",
    seed: int = 1234,
    overwrite: bool = False,
    device: str = "cpu",
) -> Path:
    """Write the HF checkpoint ``hf_dir`` as a megatron_polar checkpoint under ``output``; return its path."""
    from megatron_polar.model.standalone import build_single

    hf_dir, output = Path(hf_dir), Path(output)
    if head_init not in ("zeros", "normal"):
        raise ConversionError(f"--head-init {head_init!r} is not one of zeros, normal")
    hf, reader, layout, model_cfg = _open_hf(hf_dir, reward_token, split_token, tokenizer)
    shape = TrunkShape.of(model_cfg)
    if manager.latest_complete(output) is not None and not overwrite:
        raise ConversionError(f"{output} already holds a checkpoint; pass --overwrite to replace it")
    precision = _hf_precision(hf, dtype)
    cfg = _single_process_cfg(model_cfg, precision, seed, device)

    model = build_single(cfg, device)
    head = _copy_hf_weights(model, reader, layout, shape, head_init, seed)
    log.info(
        "imported %s (%s layout, %s) with %s reward head",
        hf_dir,
        layout.name,
        precision,
        head or head_init,
    )
    source = {"source": str(hf_dir.resolve()), "layout": layout.name, "head": head or head_init}
    return manager.save(output, 0, [model], train_state={"import": source}, config_yaml=to_yaml(cfg))


@torch.no_grad()
def load_hf_model(
    hf_dir: str | Path,
    *,
    precision: str = "auto",
    device: str = "cpu",
    require_head: bool = True,
    transformer_impl: str | None = None,
) -> tuple[PolarConfig, torch.nn.Module, str]:
    """Build the reward model of an HF directory in this process, without writing a checkpoint.

    The same checks and tensor mapping as :func:`import_hf` (either layout); the special token ids come
    from ``config.json``. Returns ``(config, model in eval mode, layout name)``. ``require_head`` refuses
    a directory without a reward head (``score.weight`` / ``v_head.weight``), whose rewards would all be 0.
    ``transformer_impl`` picks the layer spec (default ``auto``: Transformer Engine when it is usable).
    """
    from megatron_polar.model.standalone import build_single, with_transformer_impl

    hf_dir = Path(hf_dir)
    hf, reader, layout, model_cfg = _open_hf(hf_dir)
    shape = TrunkShape.of(model_cfg)
    if require_head and not any(h in reader.names() for h in layout.head_names):
        raise ConversionError(
            f"{hf_dir} has no reward head ({' or '.join(layout.head_names)}): it is a base model, not a "
            "reward model; import it with import-hf and train it first"
        )
    cfg = _single_process_cfg(model_cfg, _hf_precision(hf, precision), 1234, device)
    cfg = with_transformer_impl(cfg, transformer_impl)
    model = build_single(cfg, device)
    _copy_hf_weights(model, reader, layout, shape, "zeros", 1234)
    log.info("loaded %s (%s layout, %s) in memory", hf_dir, layout.name, cfg.train.precision)
    return cfg, model.eval(), layout.name


def _pad_token_id(explicit: int | None, vocab: TokenVocab | None, reward_id: int | None) -> int:
    """A pad id for last-non-pad pooling: anything but the reward token works."""
    if explicit is not None:
        if explicit == reward_id:
            raise ConversionError(f"--pad-token-id {explicit} is the reward token; pooling would skip it")
        return explicit
    for candidate in (vocab.id_of(vocab.pad_token), vocab.id_of(vocab.eos_token)) if vocab else ():
        if candidate is not None and candidate != reward_id:
            return candidate
    return 1 if reward_id == 0 else 0


def _llama_config(m: ModelConfig, dtype: str, pad_id: int, vocab: TokenVocab | None) -> dict:
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
    out.update(dtype=_DTYPE_NAME[dtype], torch_dtype=_DTYPE_NAME[dtype], model_type="llama")
    return out


def _internlm2_config(m: ModelConfig, dtype: str, vocab: TokenVocab | None) -> dict:
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
        "torch_dtype": _DTYPE_NAME[dtype],
        "use_cache": True,
        "vocab_size": m.vocab_size,
    }


@torch.no_grad()
def export_hf(
    checkpoint: str | Path,
    output: str | Path,
    *,
    fmt: str = "llama",
    tokenizer: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = "4GB",
    pad_token_id: int | None = None,
    reward_token_id: int | None = None,
    split_token_id: int | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> Path:
    """Export the megatron_polar checkpoint ``checkpoint`` (any saved layout) as an HF directory."""
    from megatron_polar.checkpoint.loading import load_checkpoint_model

    output = Path(output)
    if fmt not in LAYOUTS:
        raise ConversionError(f"--format {fmt!r} is not one of {sorted(LAYOUTS)}")
    check_target(output, overwrite)  # fail before the (long) model load
    if tokenizer is not None and not Path(tokenizer).exists():
        raise ConversionError(f"missing tokenizer {tokenizer}")
    try:
        ckpt = manager.resolve(checkpoint)
    except manager.CheckpointError as exc:
        raise ConversionError(str(exc)) from exc
    cfg, model = load_checkpoint_model(str(ckpt), precision=None, device=device)
    dtype = dtype or cfg.train.precision
    if dtype not in _TORCH_DTYPE:
        raise ConversionError(f"--dtype {dtype!r} is not one of bf16, fp16, fp32")
    m = cfg.model
    m = replace(
        m,
        reward_token_id=reward_token_id if reward_token_id is not None else m.reward_token_id,
        split_token_id=split_token_id if split_token_id is not None else m.split_token_id,
    )
    if m.reward_token_id is None:
        log.warning("no reward_token_id in %s or on the command line: clients must know it", ckpt)
    layout, shape = LAYOUTS[fmt], TrunkShape.of(m)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}

    def get(name: str) -> torch.Tensor:
        return state[resolve_mcore_name(name, state)]

    with atomic_directory(output, overwrite) as tmp:
        writer = ShardedSafetensorsWriter(tmp, parse_size(max_shard_size), _TORCH_DTYPE[dtype])
        for hf_name, build in layout.from_mcore(shape, get):
            writer.add(hf_name, build())
        files = writer.finish()
        special = {"reward_token": m.reward_token_id, "split_token": m.split_token_id}
        vocab = export_tokenizer(tokenizer, tmp, special, fmt) if tokenizer is not None else None
        if fmt == "internlm2":
            for name in REMOTE_CODE_FILES:
                shutil.copyfile(REMOTE_CODE_DIR / name, tmp / name)
        if fmt == "llama":
            config = _llama_config(m, dtype, _pad_token_id(pad_token_id, vocab, m.reward_token_id), vocab)
        else:
            config = _internlm2_config(m, dtype, vocab)
        write_json(tmp / "config.json", config)
        provenance = {"checkpoint": str(ckpt.resolve()), "format": fmt, "dtype": dtype, "files": files}
        write_json(tmp / "polar_export.json", provenance)
    log.info("exported %s as %s (%s, %.1f MB) to %s", ckpt, fmt, dtype, writer.total_bytes / 1e6, output)
    return output
