"""Sets up and tears down ``torch.distributed`` and megatron-core's ``parallel_state``.

This module and :mod:`megatron_polar.parallel.comm` (ranks, stage flags and collectives for the layers
above) are the only modules that import either; ``tests/test_import_contract.py`` enforces it and lists
the few exceptions. Entry points ask :class:`Topology` which rank they are and which stage they hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from megatron_polar.config.schema import ParallelConfig
from megatron_polar.parallel import cpu_backend
from megatron_polar.utils.errors import ConfigError
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    """Where this process runs, decided from ``parallel.backend`` and whether a GPU is usable."""

    gpu: bool  # CUDA with NCCL; otherwise the CPU with gloo and the CPU backend
    hide_gpus: bool  # a CPU run on a GPU host: CUDA is reported absent to everything in this process


def plan_device(backend: str, gpu_present: bool) -> DevicePlan:
    """``auto``: the GPU when there is one; ``gloo``: the CPU even on a GPU host (CPU tools such as
    ``convert import-hf --device cpu`` and the demo's evaluation); ``nccl``: the GPU or an error."""
    if backend == "gloo":
        return DevicePlan(gpu=False, hide_gpus=gpu_present)
    if backend == "nccl" and not gpu_present:
        raise ConfigError("parallel.backend=nccl but no CUDA device is usable; use backend=gloo or auto")
    return DevicePlan(gpu=gpu_present, hide_gpus=False)


def use_gpu(backend: str = "auto") -> bool:
    """Whether this process runs on a GPU (``auto``: when CUDA is usable)."""
    return plan_device(backend, torch.cuda.is_available()).gpu


def _hide_gpus() -> None:
    """Make this process a CPU process on a GPU host: the CPU backend refuses to redirect CUDA calls
    while CUDA is usable (so that a GPU job never falls back silently); an explicit gloo run asks for
    exactly that, and must not touch the GPU through any ``is_available()`` check either."""
    log.warning("parallel.backend=gloo on a machine with a GPU: this process runs on the CPU")
    torch.cuda.is_available = lambda: False
    torch.cuda.device_count = lambda: 0


@dataclass(frozen=True)
class Topology:
    """Ranks and sizes of this process in the TP x PP x DP grid."""

    world_size: int
    rank: int
    local_rank: int
    tp_size: int
    pp_size: int
    vpp_size: int | None
    dp_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: torch.device

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_logging_rank(self) -> bool:
        """The rank that owns the loss and writes logs: last stage, TP rank 0, DP rank 0."""
        return self.is_last_stage and self.tp_rank == 0 and self.dp_rank == 0


def check_world_size(parallel: ParallelConfig, world_size: int) -> int:
    """Data-parallel size for ``world_size`` processes, or a ConfigError saying what to change."""
    mp = parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size
    if world_size % mp:
        raise ConfigError(
            f"world size {world_size} is not divisible by parallel.tensor_model_parallel_size x "
            f"parallel.pipeline_model_parallel_size = {mp}; launch a multiple of {mp} processes"
        )
    return world_size // mp


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def initialize(parallel: ParallelConfig, seed: int) -> Topology:
    """Initialise torch.distributed (NCCL on GPUs, gloo on CPU), parallel_state and the RNG trackers.

    Reads the standard launcher environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``); a single process needs none of it.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    check_world_size(parallel, world_size)
    plan = plan_device(parallel.backend, torch.cuda.is_available())
    gpu = plan.gpu
    if gpu:
        torch.cuda.set_device(local_rank)
    else:
        if plan.hide_gpus and not cpu_backend.is_enabled():
            _hide_gpus()
        cpu_backend.enable()

    if not dist.is_initialized():
        init_method = None  # env://: MASTER_ADDR and MASTER_PORT from the launcher
        if world_size == 1 and "MASTER_PORT" not in os.environ:
            # A world of one agrees with nobody: a free port, without exporting it to child processes.
            init_method = f"tcp://127.0.0.1:{_free_port()}"
        dist.init_process_group(
            backend="nccl" if gpu else "gloo",
            init_method=init_method,
            world_size=world_size,
            rank=rank,
            timeout=timedelta(minutes=parallel.distributed_timeout_minutes),
        )
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor_model_parallel_size,
            pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
            distributed_timeout_minutes=parallel.distributed_timeout_minutes,
        )
    seed_everything(seed)
    topo = current()
    log.info(
        "world %d = TP %d x PP %d x DP %d on %s",
        topo.world_size,
        topo.tp_size,
        topo.pp_size,
        topo.dp_size,
        "GPU/nccl" if gpu else "CPU/gloo",
    )
    return topo


def seed_everything(seed: int) -> None:
    """Seed Python-side RNGs identically and megatron's model-parallel RNG tracker per TP/PP rank."""
    import random

    import numpy as np

    # Different pipeline stages initialise different layers: offset like Megatron does.
    stage_seed = seed + 100 * ps.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)


def current() -> Topology:
    """This process's place in the grid (after :func:`initialize`)."""
    return Topology(
        world_size=dist.get_world_size(),
        rank=dist.get_rank(),
        local_rank=_env_int("LOCAL_RANK", 0),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        vpp_size=ps.get_virtual_pipeline_model_parallel_world_size(),
        dp_size=ps.get_data_parallel_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
        device=torch.device("cuda", torch.cuda.current_device())
        if not cpu_backend.is_enabled()
        else torch.device("cpu"),
    )


def destroy() -> None:
    """Tear down parallel_state and the process group (tests and clean exits)."""
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
