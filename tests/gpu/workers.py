"""GPU workers (Transformer Engine): run in a spawned rank so each test gets a clean CUDA process."""

from __future__ import annotations

import torch

from megatron_polar.config import load_config
from megatron_polar.data.batching import collate_packed, collate_padded
from megatron_polar.model.builder import build_model_chunks
from megatron_polar.parallel import topology
from megatron_polar.training.setup import wrap_ddp
from tests.support.parity_workers import random_pairs


def te_packed_vs_padded(overrides: list[str]) -> dict:
    """Rewards and reward-head gradients of THD-packed rows against padded rows, TE spec on one GPU."""
    cfg = load_config(
        [
            "model.transformer_impl=transformer_engine",
            "data.seq_length=256",
            # one synchronous reduce, so main_grad holds this backward's gradient when it returns
            "parallel.overlap_grad_reduce=false",
            "parallel.use_distributed_optimizer=false",
            *overrides,
        ]
    )
    topo = topology.initialize(cfg.parallel, seed=1234)
    [model] = build_model_chunks(cfg)
    # Wrapped as training wraps it: TE's gradient_accumulation_fusion writes into weight.main_grad,
    # which only megatron-core's DDP allocates.
    [ddp] = wrap_ddp(cfg, [model])
    with torch.no_grad():
        model.reward_head.weight.normal_(0, 0.3)
    pairs = random_pairs(4, vocab=500, lo=16, hi=100, seed=0)
    padded = collate_padded(pairs, 256, explicit_mask=False).to(topo.device)
    packed = collate_packed([pairs[:2], pairs[2:]], 512, thd=True).to(topo.device)
    out = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        ddp.zero_grad_buffer()
        rewards = ddp(batch)
        rewards.sum().backward()
        ddp.finish_grad_sync()
        out[name] = {
            "rewards": rewards.detach().float().cpu(),
            "head_grad": model.reward_head.weight.main_grad.float().cpu(),
        }
    return out


def local_checkpoint_into_te(root: str) -> dict:
    """Rewards of a checkpoint saved with the local spec, scored by the local and by the TE model."""
    from megatron_polar.checkpoint import manager
    from megatron_polar.checkpoint.model_loading import load_checkpoint_model
    from megatron_polar.config import to_yaml

    cfg = load_config(["model.transformer_impl=local", "train.precision=bf16"])
    topology.initialize(cfg.parallel, seed=1234)
    [model] = build_model_chunks(cfg)
    with torch.no_grad():
        model.reward_head.weight.normal_(0, 0.3)
    manager.save(root, 1, [model], config_yaml=to_yaml(cfg))
    pairs = random_pairs(4, vocab=500, lo=16, hi=100, seed=1)
    out = {}
    for impl in ("local", "transformer_engine"):
        _, m = load_checkpoint_model(root, precision="bf16", device="cuda", transformer_impl=impl)
        batch = collate_padded(pairs, 256, explicit_mask=impl == "local").to("cuda")
        with torch.no_grad():
            out[impl] = m(batch).float().cpu()
    return out


def scoring_local_vs_te(root: str) -> dict:
    """Rewards of one bf16 checkpoint scored with the TE spec, and with the local spec in shared-prefix
    rows and in plain rows, on one GPU."""
    import random

    from megatron_polar.checkpoint import manager
    from megatron_polar.checkpoint.model_loading import load_checkpoint_model
    from megatron_polar.config import to_yaml
    from megatron_polar.scoring.scorer import PolarScorer

    cfg = load_config(["model.transformer_impl=transformer_engine", "train.precision=bf16"])
    topology.initialize(cfg.parallel, seed=1234)
    [model] = build_model_chunks(cfg)
    with torch.no_grad():
        model.reward_head.weight.normal_(0, 0.3)
    manager.save(root, 1, [model], config_yaml=to_yaml(cfg))
    rng = random.Random(0)
    sequences = []
    for _ in range(3):  # three groups of four candidates sharing a 60-token prefix
        prefix = [rng.randrange(1, 500) for _ in range(60)]
        sequences += [prefix + [rng.randrange(1, 500) for _ in range(rng.randint(5, 30))] for _ in range(4)]
    out = {}
    for name, impl, share in (
        ("te", "transformer_engine", None),
        ("shared", "local", True),
        ("plain", "local", False),
    ):
        _, m = load_checkpoint_model(root, precision="bf16", device="cuda", transformer_impl=impl)
        scorer = PolarScorer(m, tokenizer=None, share_prefix=share)
        out[name] = {"share_prefix": scorer.share_prefix, "rewards": scorer.forward_sequences(sequences)}
    return out


def te_thd_rope_fused(overrides: list[str]) -> dict:
    """THD rows through TE with fused RoPE (the table sized by the longest sequence) against padded rows,
    and the host syncs of the THD forward, counted by CUDA's sync debug mode."""
    import warnings

    cfg = load_config(["model.transformer_impl=transformer_engine", "data.seq_length=256", *overrides])
    topo = topology.initialize(cfg.parallel, seed=1234)
    [model] = build_model_chunks(cfg)
    assert model.config.apply_rope_fusion
    with torch.no_grad():
        model.reward_head.weight.normal_(0, 0.3)
    pairs = random_pairs(8, vocab=500, lo=16, hi=100, seed=0)
    padded = collate_padded(pairs, 256, explicit_mask=False).to(topo.device)
    packed = collate_packed([pairs[:4], pairs[4:]], 1024, thd=True).to(topo.device)
    out = {
        "table": model._rotary(packed, packed.tokens.shape[1]).shape[0],
        "max_seqlen": packed.packed_seq_params.max_seqlen_q,
    }
    with torch.no_grad():
        out["padded"] = model(padded).float().cpu()
        model(packed)  # warm-up: first-call kernel selection may sync
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rewards = model(packed)
        torch.cuda.set_sync_debug_mode(0)
        out["packed"] = rewards.float().cpu()
    out["syncs"] = [str(w.message)[:200] for w in caught if "synchroniz" in str(w.message)]
    return out


def te_sequence_parallel_rewards(sequence_parallel: bool, overrides: list[str]) -> dict:
    """Rewards and the reward-head gradient at TP2, with or without sequence parallelism (TE spec)."""
    cfg = load_config(
        [
            "model.transformer_impl=transformer_engine",
            "data.seq_length=256",
            "parallel.tensor_model_parallel_size=2",
            f"parallel.sequence_parallel={str(sequence_parallel).lower()}",
            *overrides,
        ]
    )
    topo = topology.initialize(cfg.parallel, seed=1234)
    [model] = build_model_chunks(cfg)
    with torch.no_grad():
        model.reward_head.weight.normal_(0, 0.3)
    pairs = random_pairs(4, vocab=500, lo=16, hi=100, seed=0)
    batch = collate_packed([pairs[:2], pairs[2:]], 512, thd=True).to(topo.device)
    rewards = model(batch)
    rewards.sum().backward()
    return {
        "rewards": rewards.detach().float().cpu(),
        "head_grad": model.reward_head.weight.grad.float().cpu(),
    }
