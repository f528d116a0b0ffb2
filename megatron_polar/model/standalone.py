"""One-process use of a reward model outside training: conversion, scoring, serving, evaluation.

Sets up a world of one (gloo on CPU, NCCL on a GPU) with TP=PP=1 and builds the full model; checkpoints
saved at any layout load into it through dist_checkpointing
(:func:`megatron_polar.checkpoint.model_loading.load_checkpoint_model`).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from megatron_polar.config.schema import ParallelConfig, PolarConfig, TransformerImpl, values
from megatron_polar.model.builder import build_model_chunks
from megatron_polar.model.reward_model import PolarRewardModel
from megatron_polar.parallel import topology


def single_process_config(cfg: PolarConfig, precision: str | None = None) -> PolarConfig:
    """``cfg`` re-laid out for one process (TP=PP=1, no sequence parallelism or VPP)."""
    parallel = ParallelConfig(
        tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1,
        use_distributed_optimizer=False,
        overlap_grad_reduce=False,
        backend=cfg.parallel.backend,
    )
    train = replace(cfg.train, precision=precision or cfg.train.precision)
    return replace(cfg, parallel=parallel, train=train)


def init_single_process(cfg: PolarConfig, device: str = "auto") -> torch.device:
    """Initialise a world of one for ``cfg`` (idempotent); ``device`` is auto, cpu or cuda."""
    for key, value in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    backend = {"cpu": "gloo", "cuda": "nccl"}.get(device, cfg.parallel.backend)
    topo = topology.initialize(replace(cfg.parallel, backend=backend), seed=cfg.train.seed)
    return topo.device


def build_single(cfg: PolarConfig, device: str = "auto") -> PolarRewardModel:
    """A freshly initialised full model in a world of one."""
    init_single_process(cfg, device)
    [model] = build_model_chunks(cfg)
    return model


def with_transformer_impl(cfg: PolarConfig, impl: str | None) -> PolarConfig:
    """``cfg`` built with ``impl`` (``auto``, ``transformer_engine`` or ``local``; None keeps the saved one).

    Checkpoints load into either spec: the local spec maps its norm names onto Transformer Engine's.
    FP8 is dropped for ``local``, whose layers have no FP8 kernels.
    """
    if impl is None:
        return cfg
    if impl not in values(TransformerImpl):
        raise ValueError(f"transformer_impl must be auto, transformer_engine or local, got {impl!r}")
    fp8 = None if impl == "local" else cfg.model.fp8
    return replace(cfg, model=replace(cfg.model, transformer_impl=impl, fp8=fp8))
