"""Model workers that run in a spawned process (megatron-core's parallel state is per process)."""

from __future__ import annotations

import contextlib

import torch
from megatron.core.models.common.embeddings import rope_utils

from megatron_polar.config import load_config
from megatron_polar.data.batching import collate_packed
from megatron_polar.model.builder import build_model_chunks
from megatron_polar.model.sdpa_attention import SdpaAttention
from megatron_polar.parallel import cpu_backend, topology
from tests.model.host_syncs import HostSyncCounter
from tests.support.parity_workers import random_pairs

ROW = 96


def reference_fused_rope_thd(
    t, cu_seqlens, freqs, cp_size: int = 1, cp_rank: int = 0, interleaved: bool = False
):
    """What TE's fused THD RoPE computes (``transformer_engine/pytorch/attention/rope.py``,
    ``apply_rotary_pos_emb(..., tensor_format="thd", fused=True)``; ``csrc/extensions/apply_rope.cpp``
    takes ``max_s = freqs.size(0)`` and reads ``cu_seqlens`` on the device): token ``i`` of sequence ``j``
    is rotated by ``freqs[i - cu_seqlens[j]]``, non-interleaved halves. Written without host syncs,
    as the kernel runs. ``interleaved`` is the keyword megatron-core >= 0.17 passes
    (``extensions/transformer_engine.py`` ``fused_apply_rotary_pos_emb_thd``); the model never sets it."""
    assert cp_size == 1 and not interleaved
    tokens = torch.arange(t.shape[0], device=t.device)
    start = cu_seqlens[torch.searchsorted(cu_seqlens, tokens, right=True) - 1]
    angle = freqs[:, 0, 0][tokens - start].unsqueeze(1)  # [t, 1, d]
    half = t.shape[-1] // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return (t * angle.cos().to(t.dtype) + rotated * angle.sin().to(t.dtype)).to(t.dtype)


@contextlib.contextmanager
def _thd_through_local_attention(mask: torch.Tensor):
    """Let the local spec's SDPA attention run a THD batch: megatron-core squeezes q/k/v to ``[t, heads,
    d]`` for THD; this restores the batch dimension and attends under the block-diagonal ``mask``. The
    RoPE path under test (megatron-core's, driven by our rotary table) is untouched."""
    original = SdpaAttention.forward

    def forward(
        self,
        query,
        key,
        value,
        attention_mask,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if packed_seq_params is None:
            return original(self, query, key, value, attention_mask, attn_mask_type, attention_bias)
        q, k, v = (x.unsqueeze(1) for x in (query, key, value))
        return original(self, q, k, v, mask, attn_mask_type, attention_bias)

    SdpaAttention.forward = forward
    try:
        yield
    finally:
        SdpaAttention.forward = original


def rope_thd_forward(layer_counts: tuple[int, ...] = (2, 4), rows: int = 2) -> dict:
    """For each layer count and each RoPE path (megatron-core unfused, TE fused semantics through
    :func:`reference_fused_rope_thd`): rewards of packed rows through the THD path and through the masked
    path, the rotary table length and the host syncs of the THD forward."""
    base = load_config(["model=tiny", f"data.seq_length={ROW}"])
    topology.initialize(base.parallel, seed=1234)
    pairs = random_pairs(4 * rows, vocab=500, lo=4, hi=11, seed=0)
    groups = [pairs[4 * r : 4 * r + 4] for r in range(rows)]
    masked = collate_packed(groups, ROW)
    thd = collate_packed(groups, ROW, thd=True)
    cu = thd.packed_seq_params.cu_seqlens_q.long()
    segment = torch.searchsorted(cu, torch.arange(int(cu[-1])), right=True)
    causal = torch.ones(len(segment), len(segment)).triu(1).bool()
    thd_mask = ((segment[:, None] != segment[None, :]) | causal)[None, None]
    out: dict = {"max_seqlen": thd.packed_seq_params.max_seqlen_q, "row_tokens": thd.tokens.shape[1]}
    saved = rope_utils.fused_apply_rotary_pos_emb_thd, cpu_backend.suspended
    rope_utils.fused_apply_rotary_pos_emb_thd = reference_fused_rope_thd
    try:
        for layers in layer_counts:
            cfg = load_config(["model=tiny", f"model.num_layers={layers}", f"data.seq_length={ROW}"])
            [model] = build_model_chunks(cfg, use_te=False)
            with torch.no_grad():
                model.reward_head.weight.normal_(0, 0.3)
                want = model(masked)
                for fused in (False, True):
                    model.config.apply_rope_fusion = fused  # after __post_init__, which looks for TE
                    table = model._rotary(thd, thd.tokens.shape[1])
                    # The forward turns torch function modes off (cpu_backend.suspended); count inside it.
                    cpu_backend.suspended = contextlib.nullcontext
                    with _thd_through_local_attention(thd_mask), HostSyncCounter() as syncs:
                        got = model(thd)
                    cpu_backend.suspended = saved[1]
                    out[(layers, fused)] = {
                        "thd": got,
                        "masked": want,
                        "table_length": table.shape[0],
                        "syncs": dict(syncs.calls),
                    }
                model.config.apply_rope_fusion = False
    finally:
        rope_utils.fused_apply_rotary_pos_emb_thd, cpu_backend.suspended = saved
    return out


def reward_rows_tp(seq: int = 12, rows: int = 3, hidden: int = 5) -> dict:
    """Sequence-parallel reward-row selection on this TP rank against the full all-gather, forward and
    backward. Every rank draws the same full ``[s, b, h]`` and keeps its sequence shard, as SP holds it."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

    from megatron_polar.model.reward_model import gather_reward_rows

    cfg = load_config(["model=tiny", "parallel.tensor_model_parallel_size=2"])
    topology.initialize(cfg.parallel, seed=1234)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    gen = torch.Generator().manual_seed(7)
    full = torch.randn(seq, rows, hidden, generator=gen, dtype=torch.float64)
    weight = torch.randn(hidden, generator=gen, dtype=torch.float64)
    # Reward positions on both shards, at both shard edges and twice on one position.
    cols = [0, seq // tp - 1, seq // tp, seq - 1, 3, 3]
    flat = torch.tensor([(i % rows) * seq + c for i, c in enumerate(cols)])
    shard = slice(rank * seq // tp, (rank + 1) * seq // tp)
    out = {}
    for name in ("rows", "gather"):
        local = full[shard].clone().requires_grad_(True)
        if name == "rows":
            picked = gather_reward_rows(local, flat, sequence_parallel=True)
        else:  # what the head did before: all-gather the whole sequence, then pick
            whole = gather_from_sequence_parallel_region(local, tensor_parallel_output_grad=False)
            picked = whole.transpose(0, 1).reshape(-1, hidden)[flat]
        (picked @ weight).pow(2).sum().backward()
        out[name] = {"picked": picked.detach(), "grad": local.grad}
    out["direct"] = full.transpose(0, 1).reshape(-1, hidden)[flat]
    return out
