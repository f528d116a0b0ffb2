"""Move between megatron-core's sharded parameters and one full (TP=1, PP=1) state dict.

Names are the single-process model's ``state_dict`` names, with layers numbered globally
(``decoder.layers.{i}``). Tensor-parallel shards follow each parameter's ``partition_dim``; the SwiGLU
``linear_fc1`` is special because every TP rank holds ``[gate_r; up_r]`` rather than a contiguous slice
of ``[gate; up]``. Used for parity tests across layouts and for in-process import/export.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from megatron_polar.parallel import comm

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXTRA_STATE = "_extra_state"


def _global_name(chunk: nn.Module, local_name: str) -> str:
    """``decoder.layers.{local}`` → ``decoder.layers.{global}`` using each layer's ``layer_number``."""
    m = _LAYER.match(local_name)
    if not m:
        return local_name
    layer = chunk.decoder.layers[int(m.group(1))]
    return f"decoder.layers.{layer.layer_number - 1}." + local_name[m.end() :]


def _is_fc1(name: str) -> bool:
    return name.endswith("mlp.linear_fc1.weight")


def shard_of(name: str, full: torch.Tensor, param: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's slice of the full tensor ``full`` for parameter ``param``."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim = param.partition_dim
    if _is_fc1(name):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp_size, 0)[tp_rank], up.chunk(tp_size, 0)[tp_rank]], dim=0)
    return full.chunk(tp_size, dim=dim)[tp_rank]


def unshard(name: str, shards: list[torch.Tensor], param: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`shard_of` given every TP rank's slice in rank order."""
    if not getattr(param, "tensor_model_parallel", False) or len(shards) == 1:
        return shards[0]
    if _is_fc1(name):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=param.partition_dim)


def named_parameters_global(chunks: list[nn.Module]):
    """(global name, parameter) for every parameter of this rank's chunks."""
    for chunk in chunks:
        module = getattr(chunk, "module", chunk)  # unwrap DDP
        for local_name, param in module.named_parameters():
            yield _global_name(module, local_name), param


@torch.no_grad()
def load_full_state(chunks: list[nn.Module], full: dict[str, torch.Tensor]) -> None:
    """Copy this rank's shards of ``full`` into the parameters of ``chunks``."""
    tp_rank, tp_size = comm.tp_rank(), comm.tp_size()
    for name, param in named_parameters_global(chunks):
        if name not in full:
            raise KeyError(f"full state has no tensor for parameter {name}")
        shard = shard_of(name, full[name], param, tp_rank, tp_size)
        if shard.shape != param.shape:
            raise ValueError(f"{name}: shard shape {tuple(shard.shape)} != parameter {tuple(param.shape)}")
        param.copy_(shard.to(param.dtype))


def gather_full_state(chunks: list[nn.Module], *, grads: bool = False) -> dict[str, torch.Tensor]:
    """Assemble the full parameters (or their ``main_grad``/``grad``) on every rank, in fp32."""
    tp_size = comm.tp_size()
    local: dict[str, torch.Tensor] = {}
    for name, param in named_parameters_global(chunks):
        value = param
        if grads:
            value = getattr(param, "main_grad", None)
            value = param.grad if value is None else value
        value = value.detach().float()
        if tp_size > 1 and getattr(param, "tensor_model_parallel", False):
            value = unshard(name, comm.gather_tensor_parallel(value), param)
        local[name] = value.cpu()
    if comm.pp_size() == 1:
        return local
    gathered: list[dict] = comm.gather_pipeline_objects(local)
    full: dict[str, torch.Tensor] = {}
    for part in gathered:
        full.update(part)
    return full
