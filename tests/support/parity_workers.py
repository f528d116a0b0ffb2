"""Worker functions run inside spawned gloo ranks by the distributed tests."""

from __future__ import annotations

import torch

from megatron_polar.checkpoint.full_state import gather_full_state, load_full_state
from megatron_polar.config import load_config
from megatron_polar.data.batching import collate_packed, collate_padded
from megatron_polar.model.builder import build_model_chunks
from megatron_polar.parallel import topology
from megatron_polar.training.forward_step import forward_backward
from megatron_polar.training.setup import wrap_ddp


def random_pairs(n: int, vocab: int, lo: int, hi: int, seed: int) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)

    def seq() -> list[int]:
        n = int(torch.randint(lo, hi, (1,), generator=g))
        return torch.randint(0, vocab, (n,), generator=g).tolist()

    return [(seq(), seq()) for _ in range(n)]


def parity_step(
    overrides: list[str],
    full_state: dict | None,
    pairs: list,
    micro_batches: int,
    layout: str,
    seq_length: int,
) -> dict:
    """Build the model, optionally load full weights, run one forward-backward over ``pairs`` split into
    ``micro_batches`` (divided among DP ranks) and return rewards, metrics and full gradients."""
    cfg = load_config(["train.precision=fp32", "parallel.use_distributed_optimizer=false", *overrides])
    topo = topology.initialize(cfg.parallel, seed=1234)
    chunks = build_model_chunks(cfg)
    if full_state is None:
        # Give the zero-initialised reward head a non-trivial value so gradients flow everywhere.
        for c in chunks:
            if c.post_process:
                with torch.no_grad():
                    c.reward_head.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(7))
    else:
        load_full_state(chunks, full_state)
    wrapped = wrap_ddp(cfg, chunks)
    for w in wrapped:
        w.zero_grad_buffer()
    per_mb = len(pairs) // micro_batches
    mbs = [pairs[i * per_mb : (i + 1) * per_mb] for i in range(micro_batches)]
    mine = mbs[topo.dp_rank :: topo.dp_size]
    if layout == "padded":
        batches = [collate_padded(mb, seq_length) for mb in mine]
    else:  # packed: two pairs per row
        batches = [collate_packed([mb[i : i + 2] for i in range(0, len(mb), 2)], seq_length) for mb in mine]
    result = forward_backward(wrapped, batches, topo.device)
    grads = gather_full_state(wrapped, grads=True)
    weights = gather_full_state(wrapped)
    rewards = torch.cat(result.rewards) if result.rewards else None
    return {
        "rank": topo.rank,
        "dp_rank": topo.dp_rank,
        "last_stage": topo.is_last_stage,
        "metrics": result.metrics,
        "pairs": result.pairs,
        "rewards": rewards,
        "grads": grads,
        "weights": weights,
    }
