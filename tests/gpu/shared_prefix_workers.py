"""GPU worker: Transformer Engine's shared-prefix rows against its unshared rows, in a spawned rank."""

from __future__ import annotations

import torch

from megatron_polar.config import load_config
from megatron_polar.data.batching import collate_packed, collate_padded, collate_shared
from megatron_polar.model.builder import build_model_chunks
from megatron_polar.parallel import topology
from megatron_polar.training.setup import wrap_ddp
from tests.model.shared_prefix_workers import shared_prefix_pairs


def te_shared_vs_unshared(overrides: list[str]) -> dict:
    """Rewards and every parameter's gradient for unshared THD-packed and padded rows and their shared
    counterparts, TE spec on one GPU, same weights."""
    cfg = load_config(
        [
            "model.transformer_impl=transformer_engine",
            "data.seq_length=64",
            "parallel.overlap_grad_reduce=false",  # main_grad holds this backward's gradient on return
            "parallel.use_distributed_optimizer=false",
            *overrides,
        ]
    )
    topo = topology.initialize(cfg.parallel, seed=1234)
    [model] = build_model_chunks(cfg)
    [ddp] = wrap_ddp(cfg, [model])
    with torch.no_grad():
        model.reward_head.weight.normal_(0, 0.3)
    pairs = shared_prefix_pairs(8, vocab=500, seed=0)
    layouts = {
        "padded": collate_padded(pairs, 64, explicit_mask=False),
        "shared_padded": collate_shared([[p] for p in pairs], 64),
        "packed": collate_packed([pairs[i : i + 2] for i in range(0, 8, 2)], 128, thd=True),
        "shared_packed": collate_shared([pairs[i : i + 4] for i in range(0, 8, 4)], 128),
    }
    out = {}
    for name, batch in layouts.items():
        ddp.zero_grad_buffer()
        rewards = ddp(batch.to(topo.device))
        rewards.sum().backward()
        ddp.finish_grad_sync()
        out[name] = {
            "rewards": rewards.detach().float().cpu(),
            "grads": {n: p.main_grad.detach().float().cpu().clone() for n, p in model.named_parameters()},
        }
    return out
