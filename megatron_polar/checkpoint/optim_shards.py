"""Distributed-optimizer state saved shard by shard, in megatron-core's reshardable model-space layout.

megatron-core 0.16 offers these ``distrib_optim_sharding_type`` values
(``megatron/core/optimizer/distrib_optimizer.py``):

- ``fully_reshardable`` (``sharded_param_state_fully_reshardable``, lines 1404-1537): every DP rank
  all-gathers the fp32 ``param``, ``exp_avg`` and ``exp_avg_sq`` of its whole TP/PP slice
  (``get_parameter_state_dp_zero(..., return_on_all_ranks=True)``, lines 1446-1450) and saves them as
  tensors of each parameter's shape. Host memory per rank: 3 x 4 bytes x (TP/PP slice), i.e. DP times
  the rank's own shard (about 45 GB at 7B, TP2). Reshards across TP, PP and DP.
- ``dp_reshardable`` (lines 1539-1687): each rank saves its own bucket shards, no exchange; the layout is
  the DDP bucket structure, so the load asserts the same per-bucket sizes (line 1780): DP changes only.
- ``fully_sharded_model_space`` (lines 1689-1770): own shard, model layout, but as ``flattened_range``
  tensors, which 0.16's ``ShardedTensor`` rejects (``dist_checkpointing/mapping.py:133-134``).
- ``dp_zero_gather_scatter`` (lines 1371-1402): gathers the slice on DP rank 0; fixed TP x PP.

This module writes the *same* tensors as ``fully_reshardable`` (keys
``optimizer.state.{param,exp_avg,exp_avg_sq}.<model key>``, each of the parameter's global shape), but
each rank contributes only the contiguous flat range its distributed optimizer owns, cut into at most
``2 * ndim - 1`` rectangular blocks that are views of the live optimizer tensors. Nothing is gathered
or copied on save; a load reads each rank's own blocks at its new layout (any TP/PP/DP), since the
checkpoint holds whole parameters in model space. The checkpoint is interchangeable with
``fully_reshardable``: megatron-core's own loader reads ours, and ours reads its
(``tests/checkpoint/test_optim_shards.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory
from megatron.core.dist_checkpointing.utils import extract_sharded_tensors_and_factories
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

# The on-disk representation is megatron-core's canonical one; its loader dispatches on this name.
SHARDING_TYPE = "fully_reshardable"
PARAM_STATE = "param_state"
_PREFIX = "optimizer.state"

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offset, shape) inside a C-contiguous tensor


def flat_range_boxes(start: int, end: int, shape: tuple[int, ...]) -> list[Box]:
    """Cut the flat range ``[start, end)`` of a C-contiguous tensor of ``shape`` into rectangular blocks.

    Each block is itself contiguous in flat order, and the blocks follow each other, so block ``i``
    is ``flat[sum(numel of blocks < i) : ...]`` viewed with its shape. At most ``2 * ndim - 1`` blocks.
    """
    if start >= end:
        return []
    if not shape:
        return [((), ())]
    inner = math.prod(shape[1:])
    rest = tuple(shape[1:])
    if inner == 0:
        return []
    first, last = start // inner, (end - 1) // inner
    if start % inner == 0 and end % inner == 0:
        return [((first,) + (0,) * len(rest), (end // inner - first,) + rest)]
    if first == last:
        base = first * inner
        return [((first, *off), (1, *shp)) for off, shp in flat_range_boxes(start - base, end - base, rest)]
    boxes: list[Box] = []
    full_lo, full_hi = first, end // inner
    if start % inner:
        boxes += flat_range_boxes(start, (first + 1) * inner, shape)
        full_lo = first + 1
    if full_hi > full_lo:
        boxes.append(((full_lo,) + (0,) * len(rest), (full_hi - full_lo,) + rest))
    if end % inner:
        boxes += flat_range_boxes(full_hi * inner, end, shape)
    return boxes


def _model_param_map(model_sharded_state_dict: dict) -> dict[torch.Tensor, Any]:
    tensors, _ = extract_sharded_tensors_and_factories(model_sharded_state_dict)
    return {sh.data: sh for sh in nested_values(tensors)}


def _sub_tensors(
    sh: ShardedTensor | ShardedTensorFactory, shape: tuple[int, ...]
) -> list[tuple[int, ShardedTensor]]:
    """The model's checkpoint tensors that tile a parameter of local ``shape``, each with its flat start.

    A factory (e.g. the SwiGLU ``fc1`` split) is expanded on a meta tensor: its views carry their
    storage offsets, so no memory is touched.
    """
    if isinstance(sh, ShardedTensor):
        return [(0, sh)]
    built = sh.build_fn(sh.key, torch.empty(shape, device="meta"), sh.replica_id, None)
    subs = []
    for sub in nested_values(built):
        if not isinstance(sub, ShardedTensor) or not sub.data.is_contiguous():
            raise NotImplementedError(f"optimizer shards: unsupported checkpoint factory for {sh.key}")
        subs.append((sub.data.storage_offset(), sub))
    return sorted(subs, key=lambda s: s[0])


def _param_blocks(
    sh: Any, shape: tuple[int, ...], start: int, end: int, state: dict[str, torch.Tensor], instance_id: int
) -> dict[str, list[ShardedTensor]]:
    """ShardedTensors for the flat range ``[start, end)`` of one parameter, per state key."""
    out: dict[str, list[ShardedTensor]] = {k: [] for k in state}
    for sub_start, sub in _sub_tensors(sh, shape):
        sub_shape = tuple(sub.local_shape)
        lo, hi = max(start, sub_start), min(end, sub_start + math.prod(sub_shape))
        pos = lo - start  # where this sub-tensor's part begins in the rank's flat shard
        p = sub.prepend_axis_num
        # The optimizer shard is DP-partitioned: every DP rank's block is a main replica.
        replica_id = (*sub.replica_id[:2], instance_id) if isinstance(sub.replica_id, tuple) else 0
        for offset, box_shape in flat_range_boxes(lo - sub_start, hi - sub_start, sub_shape):
            numel = math.prod(box_shape)
            global_offset = tuple(sub.global_offset[:p]) + tuple(
                g + o for g, o in zip(sub.global_offset[p:], offset)
            )
            # Prepended axes (stacked layers) become leading singleton dims: 0.16 writes uneven shards
            # through ``CheckpointableShardedTensor``, which ignores ``prepend_axis_num``.
            local_shape = (1,) * p + box_shape
            for key, flat in state.items():
                out[key].append(
                    ShardedTensor(
                        key=f"{_PREFIX}.{key}.{sub.key}",
                        data=flat[pos : pos + numel].view(local_shape),
                        dtype=flat.dtype,
                        local_shape=local_shape,
                        global_shape=tuple(sub.global_shape),
                        global_offset=global_offset,
                        axis_fragmentations=None,
                        replica_id=replica_id,
                        prepend_axis_num=0,
                        allow_shape_mismatch=sub.allow_shape_mismatch,
                    )
                )
            pos += numel
    return out


def _live_state(opt: DistributedOptimizer, model_param: torch.nn.Parameter) -> dict[str, torch.Tensor]:
    """This rank's flat fp32 param, exp_avg and exp_avg_sq of ``model_param`` (the live tensors)."""
    tensors = opt._get_main_param_and_optimizer_states(model_param)
    return {k: v for k, v in tensors.items() if k != "step"}  # ``step`` lives in the param groups


def _owned_params(opt: DistributedOptimizer):
    """(model param, flat start, flat end) of every parameter range this rank's optimizer owns."""
    for gbuf_range_maps in opt.gbuf_ranges:
        for per_bucket in gbuf_range_maps.values():
            for gbuf_range_map in per_bucket:
                for model_param, ranges in gbuf_range_map["param_map"].items():
                    yield model_param, ranges["param"].start, ranges["param"].end


def _distributed_state(opt: DistributedOptimizer, model_sd: dict, is_loading: bool) -> dict:
    if is_loading:
        # As megatron-core does: allocate the state so the blocks below can view it.
        opt.load_state_dict(opt.state_dict())
    common = opt.state_dict()
    by_param = _model_param_map(model_sd)
    blocks = {}
    for i, (model_param, start, end) in enumerate(_owned_params(opt)):
        if model_param not in by_param:
            raise ValueError("optimizer shards: a trained parameter is missing from the model state dict")
        state = _live_state(opt, model_param)
        blocks[i] = _param_blocks(
            by_param[model_param],
            tuple(model_param.shape),
            start,
            end,
            state,
            opt.distributed_optimizer_instance_id,
        )
    return {**common, PARAM_STATE: blocks, "param_state_sharding_type": SHARDING_TYPE}


def _parts(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def sharded_state_dict(optimizer, model_sharded_state_dict: dict, is_loading: bool = False) -> dict:
    """The optimizer's sharded state dict for ``dist_checkpointing.save``/``load`` (see module docstring).

    Distributed optimizers get per-rank blocks; any other optimizer keeps megatron-core's own format.
    """
    out = {}
    for i, opt in enumerate(_parts(optimizer)):
        if isinstance(opt, DistributedOptimizer):
            out[i] = _distributed_state(opt, model_sharded_state_dict, is_loading)
        else:
            out[i] = opt.sharded_state_dict(model_sharded_state_dict, is_loading)
    return out[0] if len(out) == 1 else out


def split_loaded(optimizer, loaded: dict) -> tuple[dict, list]:
    """Separate the loaded blocks from the rest of the optimizer state dict.

    Returns ``(state_dict for optimizer.load_state_dict, blocks per part)``; call :func:`restore` with
    the blocks after ``load_state_dict``, which replaces the live tensors.
    """
    parts = _parts(optimizer)
    per_part = [loaded] if len(parts) == 1 else [loaded[i] for i in range(len(parts))]
    blocks = [
        p.pop(PARAM_STATE, None) if isinstance(o, DistributedOptimizer) else None
        for o, p in zip(parts, per_part)
    ]
    for o, p in zip(parts, per_part):
        if isinstance(o, DistributedOptimizer):
            p.pop("param_state_sharding_type", None)
    return loaded, blocks


@torch.no_grad()
def restore(optimizer, blocks: list) -> None:
    """Copy loaded blocks into the live optimizer tensors (in the order they were requested)."""
    for opt, part in zip(_parts(optimizer), blocks):
        if part is None:
            continue
        scaled = getattr(opt.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False)
        for i, (model_param, _, _) in enumerate(_owned_params(opt)):
            live = _live_state(opt, model_param)
            if part[i].keys() != live.keys():
                raise ValueError(f"optimizer state keys {sorted(part[i])} differ from {sorted(live)}")
            for key, tensors in part[i].items():
                pos = 0
                for t in tensors:  # block by block: no full-size temporary
                    live[key][pos : pos + t.numel()].copy_(t.reshape(-1))
                    pos += t.numel()
            if scaled:  # precision-aware optimizers hand out unscaled copies: write them back
                opt._set_main_param_and_optimizer_states(model_param, live)


def tensor_bytes(sharded: dict) -> int:
    """Bytes of the tensors a sharded state dict hands to the checkpoint writer."""
    return sum(
        v.data.numel() * v.data.element_size()
        for v in nested_values(sharded)
        if isinstance(v, (ShardedTensor, ShardedTensorFactory)) and v.data is not None
    )
