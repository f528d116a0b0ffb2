"""A trained reward model and its tokenizer, loaded into this process for inference.

Two sources: a megatron_polar checkpoint saved at any TP/PP layout (:func:`load_checkpoint_model`,
through dist_checkpointing into a TP=PP=1 model) and an exported HF directory
(:func:`~megatron_polar.checkpoint.hf_import.load_hf_model`, through the same tensor mapping as
``convert import-hf``). :func:`load_from_checkpoint` and :func:`load_from_hf` add the tokenizer and
check that it fits the model; the scorer (hence the server and the evaluator) and the HF export load
through this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_polar.checkpoint import manager
from megatron_polar.checkpoint.hf_import import load_hf_model
from megatron_polar.config import from_yaml
from megatron_polar.config.schema import PolarConfig
from megatron_polar.data.tokenizer import load_tokenizer
from megatron_polar.model.reward_model import PolarRewardModel
from megatron_polar.model.standalone import build_single, single_process_config, with_transformer_impl


@dataclass
class LoadedModel:
    """A reward model ready for inference, with what it was loaded from.

    Attributes:
        cfg: the model's config, laid out for one process.
        model: the full model in eval mode.
        tokenizer: the tokenizer, checked against ``cfg.model``.
        source: ``"checkpoint"`` or ``"<layout> HF export"`` (for logs).
    """

    cfg: PolarConfig
    model: PolarRewardModel
    tokenizer: Any
    source: str


def load_checkpoint_model(
    path: str, precision: str | None = "fp32", device: str = "auto", transformer_impl: str | None = None
) -> tuple[PolarConfig, PolarRewardModel]:
    """The config and the full model of a megatron_polar checkpoint (any saved layout), in eval mode.

    ``transformer_impl`` overrides the saved ``model.transformer_impl``
    (see :func:`~megatron_polar.model.standalone.with_transformer_impl`).
    """
    ckpt = manager.resolve(path)
    cfg = single_process_config(from_yaml(manager.read_config_yaml(ckpt)), precision)
    cfg = with_transformer_impl(cfg, transformer_impl)
    model = build_single(cfg, device)
    manager.load(ckpt, [model])
    model.eval()
    return cfg, model


def is_hf_directory(path: str | os.PathLike) -> bool:
    """True for an HF model directory (``config.json`` naming ``architectures``), False otherwise."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("architectures"))
    except (OSError, ValueError, AttributeError):
        return False


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; other values unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def inference_precision(precision: str | None, device: str) -> str:
    """``precision``, or by default bf16 on a GPU and fp32 on the CPU."""
    return precision or ("bf16" if device == "cuda" else "fp32")


def load_from_checkpoint(
    path: str | os.PathLike,
    tokenizer: Any,
    device: str = "auto",
    precision: str | None = None,
    transformer_impl: str | None = None,
) -> LoadedModel:
    """A megatron_polar checkpoint (directory or root of ``iter_*``) with ``tokenizer`` (loaded or a path)."""
    device = resolve_device(device)
    cfg, model = load_checkpoint_model(
        str(path),
        precision=inference_precision(precision, device),
        device=device,
        transformer_impl=transformer_impl,
    )
    tok = _load_tokenizer(tokenizer)
    check_tokenizer(cfg, tok)
    return LoadedModel(cfg, model, tok, "checkpoint")


def load_from_hf(
    directory: str | os.PathLike,
    tokenizer: Any = None,
    device: str = "auto",
    precision: str | None = None,
    transformer_impl: str | None = None,
) -> LoadedModel:
    """An exported HF directory; without ``tokenizer`` its own, with the special ids its config records."""
    device = resolve_device(device)
    cfg, model, layout = load_hf_model(
        directory,
        precision=inference_precision(precision, device),
        device=device,
        transformer_impl=transformer_impl,
    )
    tok = _load_tokenizer(tokenizer) if tokenizer is not None else _hf_tokenizer(directory, cfg)
    check_tokenizer(cfg, tok)
    return LoadedModel(cfg, model, tok, f"{layout} HF export")


def _hf_tokenizer(directory: str | os.PathLike, cfg: PolarConfig) -> Any:
    """The tokenizer an HF export carries, with the special ids its ``config.json`` records."""
    m = cfg.model
    if m.reward_token_id is None or m.split_token_id is None:
        raise ValueError(
            f"{directory}/config.json records no reward_token_id/split_token_id: pass the tokenizer (and "
            "token names) explicitly"
        )
    return load_tokenizer(directory, split_token_id=m.split_token_id, reward_token_id=m.reward_token_id)


def _load_tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(tokenizer)
    return tokenizer


def check_tokenizer(cfg: PolarConfig, tok: Any) -> None:
    """Refuse a tokenizer whose ids the model cannot embed or whose special ids disagree with it."""
    if tok.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"tokenizer has {tok.vocab_size} ids but the model embeds only {cfg.model.vocab_size}: "
            "wrong tokenizer for this checkpoint?"
        )
    for what in ("reward_token_id", "split_token_id"):
        want = getattr(cfg.model, what)
        if want is not None and want != getattr(tok, what):
            raise ValueError(
                f"the checkpoint was trained with {what}={want} but the tokenizer gives "
                f"{getattr(tok, what)}: pass the matching tokenizer or token names"
            )
