"""Workers for the shared-prefix exactness tests: one forward-backward per layout in the same process.

The unshared layouts (``collate_padded``, ``collate_packed`` with its block-diagonal mask) are the
independent reference: they compute each sequence on its own, with megatron-core's RoPE.
"""

from __future__ import annotations

import torch

from megatron_polar.checkpoint.full_state import gather_full_state
from megatron_polar.config import load_config
from megatron_polar.data.batching import collate_packed, collate_padded, collate_shared
from megatron_polar.model.builder import build_model_chunks
from megatron_polar.parallel import topology
from megatron_polar.training.forward_step import forward_backward
from megatron_polar.training.setup import wrap_ddp


def shared_prefix_pairs(n: int, vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Pairs that share a prefix of 0-14 tokens, then differ, each ending with the same reward token."""
    g = torch.Generator().manual_seed(seed)

    def draw(lo: int, hi: int) -> list[int]:
        return torch.randint(
            1, vocab - 1, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g
        ).tolist()

    pairs = []
    for _ in range(n):
        prefix, a, b = draw(0, 15), draw(1, 9), draw(1, 9)
        b[0] = a[0] % (vocab - 2) + 1  # the suffixes differ at their first token
        pairs.append((prefix + a + [vocab - 1], prefix + b + [vocab - 1]))
    return pairs


def _rows(pairs: list, per_row: int) -> list[list]:
    return [pairs[i : i + per_row] for i in range(0, len(pairs), per_row)]


LAYOUTS = {
    "padded": lambda mb, s: collate_padded(mb, s),
    "shared_padded": lambda mb, s: collate_shared(_rows(mb, 1), s),
    "packed": lambda mb, s: collate_packed(_rows(mb, 2), 2 * s),
    "shared_packed": lambda mb, s: collate_shared(_rows(mb, 2), 2 * s),
}


def shared_vs_unshared(overrides: list[str], pairs: list, micro_batches: int, seq_length: int) -> dict:
    """For each layout of :data:`LAYOUTS`: this rank's rewards, the loss and the full gradients."""
    cfg = load_config(
        ["model=tiny", "train.precision=fp32", "parallel.use_distributed_optimizer=false", *overrides]
    )
    topo = topology.initialize(cfg.parallel, seed=1234)
    chunks = build_model_chunks(cfg)
    for c in chunks:  # the reward head starts at zero: give it a value so every gradient is non-zero
        if c.post_process:
            with torch.no_grad():
                c.reward_head.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(7))
    wrapped = wrap_ddp(cfg, chunks)
    per_mb = len(pairs) // micro_batches
    mbs = [pairs[i * per_mb : (i + 1) * per_mb] for i in range(micro_batches)]
    mine = mbs[topo.dp_rank :: topo.dp_size]
    out: dict = {"rank": topo.rank, "last_stage": topo.is_last_stage}
    for name, collate in LAYOUTS.items():
        for w in wrapped:
            w.zero_grad_buffer()
        batches = [collate(mb, seq_length) for mb in mine]
        result = forward_backward(wrapped, batches, topo.device)
        out[name] = {
            "rewards": torch.cat(result.rewards) if result.rewards else None,
            "loss": result.metrics["loss"],
            # cloned: the gathered tensors may alias DDP's grad buffer, which the next layout reuses
            "grads": {k: v.detach().clone() for k, v in gather_full_state(wrapped, grads=True).items()},
            "tokens": sum(b.num_real_tokens for b in batches),
        }
    return out
