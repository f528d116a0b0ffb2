"""HF safetensors directory -> reward model: into a megatron_polar checkpoint (:func:`import_hf`) or
into memory (:func:`load_hf_model`).

:func:`import_hf` reads a Llama-layout or InternLM2-layout directory, checks that the reward model can
represent it exactly, and writes a megatron_polar checkpoint (``iter_0000000``) that training starts
from with ``checkpoint.pretrained=<root>``. A dist_checkpointing checkpoint loads at any TP/PP layout,
so one import serves every training layout.

The LM head of a causal LM is dropped (the reward model has none), so tied embeddings import fine. A
source without a reward head (``score.weight`` / ``v_head.weight``) gets a zero head by default: every
reward starts at exactly 0, the Bradley-Terry loss starts at log 2 and the first step moves the head
along the chosen-minus-rejected hidden-state difference; ``head_init="normal"`` draws it from
N(0, 1/hidden) instead.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from megatron_polar.checkpoint import manager
from megatron_polar.checkpoint.hf_config import hf_precision, model_config_from_hf
from megatron_polar.checkpoint.hf_io import ConversionError, SafetensorsReader, read_json
from megatron_polar.checkpoint.hf_layouts import HFLayout, TrunkShape, detect_layout, resolve_mcore_name
from megatron_polar.checkpoint.hf_tokenizer import TOKENIZER_FILES, TokenVocab, resolve_token
from megatron_polar.config import to_yaml
from megatron_polar.config.schema import ModelConfig, PolarConfig, TrainConfig
from megatron_polar.model.standalone import build_single, single_process_config, with_transformer_impl
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved


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
    hf_dir, output = Path(hf_dir), Path(output)
    if head_init not in ("zeros", "normal"):
        raise ConversionError(f"--head-init {head_init!r} is not one of zeros, normal")
    hf, reader, layout, model_cfg = _open_hf(hf_dir, reward_token, split_token, tokenizer)
    shape = TrunkShape.of(model_cfg)
    if manager.latest_complete(output) is not None and not overwrite:
        raise ConversionError(f"{output} already holds a checkpoint; pass --overwrite to replace it")
    precision = hf_precision(hf, dtype)
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
    hf_dir = Path(hf_dir)
    hf, reader, layout, model_cfg = _open_hf(hf_dir)
    shape = TrunkShape.of(model_cfg)
    if require_head and not any(h in reader.names() for h in layout.head_names):
        raise ConversionError(
            f"{hf_dir} has no reward head ({' or '.join(layout.head_names)}): it is a base model, not a "
            "reward model; import it with import-hf and train it first"
        )
    cfg = _single_process_cfg(model_cfg, hf_precision(hf, precision), 1234, device)
    cfg = with_transformer_impl(cfg, transformer_impl)
    model = build_single(cfg, device)
    _copy_hf_weights(model, reader, layout, shape, "zeros", 1234)
    log.info("loaded %s (%s layout, %s) in memory", hf_dir, layout.name, cfg.train.precision)
    return cfg, model.eval(), layout.name
