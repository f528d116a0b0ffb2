"""Rank functions for the optimizer-shard checkpoint tests (run in spawned gloo ranks)."""

from __future__ import annotations

import torch

from megatron_polar.checkpoint import manager, optim_shards
from megatron_polar.checkpoint.full_state import gather_full_state
from megatron_polar.config import load_config
from megatron_polar.model.builder import build_model_chunks
from megatron_polar.parallel import topology
from megatron_polar.training.setup import build_optimizer, wrap_ddp

STEP = 7  # Adam step written into the state: must come back too


def _setup(layout: str):
    cfg = load_config(
        [f"parallel={layout}", "parallel.use_distributed_optimizer=true", "train.precision=fp32"]
    )
    topology.initialize(cfg.parallel, seed=1234)
    wrapped = wrap_ddp(cfg, build_model_chunks(cfg))
    optimizer = build_optimizer(cfg, wrapped, lr=1e-3)
    manager._init_optimizer_state(optimizer)
    return wrapped, optimizer


def _dist_parts(optimizer):
    return [o for o in optim_shards._parts(optimizer) if hasattr(o, "gbuf_ranges")]


def _megatron_format(monkey: bool) -> None:
    """Make ``manager`` use megatron-core's own ``fully_reshardable`` save/load instead of ours."""
    if not monkey:
        return
    meta = {"distrib_optim_sharding_type": "fully_reshardable"}
    optim_shards.sharded_state_dict = lambda opt, sd, is_loading=False: opt.sharded_state_dict(
        sd, is_loading=is_loading, metadata=meta
    )
    optim_shards.split_loaded = lambda opt, loaded: (loaded, [])
    optim_shards.restore = lambda opt, blocks: None


def save_worker(layout: str, root: str, megatron_format: bool) -> dict:
    """Give the optimizer a recognisable state (a function of each weight), save, report sizes."""
    wrapped, optimizer = _setup(layout)
    own = 0
    with torch.no_grad():
        for opt in _dist_parts(optimizer):
            for model_param, start, end in optim_shards._owned_params(opt):
                live = opt._get_main_param_and_optimizer_states(model_param)
                live["exp_avg"].copy_(2 * live["param"] + 1)
                live["exp_avg_sq"].copy_(live["param"] * live["param"] + 0.5)
                if "step" in live:
                    live["step"].fill_(STEP)
                own += end - start
    state = manager._model_sharded_state(wrapped)
    ours = optim_shards.tensor_bytes(optim_shards.sharded_state_dict(optimizer, state))
    theirs = optim_shards.tensor_bytes(
        optimizer.sharded_state_dict(state, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    )
    _megatron_format(megatron_format)
    manager.save(root, STEP, wrapped, optimizer)
    slice_numel = sum(p.numel() for w in wrapped for p in w.parameters())
    return {
        "own_numel": own,
        "slice_numel": slice_numel,
        "ours_bytes": ours,
        "megatron_bytes": theirs,
        "weights": gather_full_state(wrapped),
    }


def load_worker(layout: str, root: str, megatron_format: bool) -> dict:
    """Load at ``layout``; check every owned optimizer element against the saved recipe."""
    wrapped, optimizer = _setup(layout)
    _megatron_format(megatron_format)
    manager.load(root, wrapped, optimizer)
    checked = 0
    for opt in _dist_parts(optimizer):
        for model_param, _, _ in optim_shards._owned_params(opt):
            live = opt._get_main_param_and_optimizer_states(model_param)
            torch.testing.assert_close(live["exp_avg"], 2 * live["param"] + 1, rtol=0, atol=0)
            torch.testing.assert_close(
                live["exp_avg_sq"], live["param"] * live["param"] + 0.5, rtol=0, atol=0
            )
            if "step" in live:
                assert int(live["step"]) == STEP
            checked += live["param"].numel()
    return {"checked": checked, "weights": gather_full_state(wrapped)}
