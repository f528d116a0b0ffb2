"""What the layers above ask of the process grid: ranks, sizes, stage flags and the few collectives.

:mod:`megatron_polar.parallel.topology` sets the grid up and tears it down; this module answers
questions about it once it exists. Together they are the only modules that import ``torch.distributed``
or megatron-core's ``parallel_state`` (``tests/test_import_contract.py`` enforces it), so the model,
the checkpoint code and the training loop name what they need ("sum over data parallelism") rather
than which group and which call. Every function works in a process without a process group too, where
that has an obvious meaning (rank 0 of one; a collective over one rank is the identity).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps


def is_initialized() -> bool:
    """Whether this process belongs to a process group."""
    return dist.is_available() and dist.is_initialized()


def is_global_rank0() -> bool:
    """Rank 0 of the world, or a process without a process group."""
    return not is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if is_initialized():
        dist.barrier()


def tp_rank() -> int:
    return ps.get_tensor_model_parallel_rank()


def tp_size() -> int:
    return ps.get_tensor_model_parallel_world_size()


def pp_rank() -> int:
    return ps.get_pipeline_model_parallel_rank()


def pp_size() -> int:
    return ps.get_pipeline_model_parallel_world_size()


def dp_rank() -> int:
    return ps.get_data_parallel_rank()


def dp_size() -> int:
    return ps.get_data_parallel_world_size()


def stage_flags(vp_stage: int | None = None) -> tuple[bool, bool]:
    """(first stage, last stage) for this rank's model chunk ``vp_stage`` (virtual stages counted)."""
    return (
        ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
    )


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (one all-reduce of one integer)."""
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if is_initialized():
        if dist.get_backend() == "nccl":
            value = value.cuda()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def share_from_last_stage(tensor: torch.Tensor) -> None:
    """Overwrite ``tensor`` on every pipeline stage with the last stage's values (in place)."""
    if ps.get_pipeline_model_parallel_world_size() > 1:
        last = ps.get_pipeline_model_parallel_last_rank()
        dist.broadcast(tensor, src=last, group=ps.get_pipeline_model_parallel_group())


def sum_over_data_parallel(tensor: torch.Tensor) -> None:
    """Sum ``tensor`` over the data-parallel group, in place."""
    dist.all_reduce(tensor, group=ps.get_data_parallel_group())


def gather_tensor_parallel(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor-parallel rank's ``tensor``, in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(tp_size())]
    dist.all_gather(parts, tensor.contiguous(), group=ps.get_tensor_model_parallel_group())
    return parts


def gather_pipeline_objects(obj: Any) -> list[Any]:
    """Every pipeline stage's ``obj`` (picklable), in stage order."""
    gathered: list[Any] = [None] * pp_size()
    dist.all_gather_object(gathered, obj, group=ps.get_pipeline_model_parallel_group())
    return gathered
