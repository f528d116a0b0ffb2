"""Shared-prefix core attention against a dense masked softmax written from the row's semantics.

The reference knows nothing of segments, gathers or bottom-right alignment: it rotates each token by its
position in its own sequence and builds the ``[t, t]`` mask from who may see whom (a prefix sees its
prefix causally, a suffix its pair's prefix and itself causally, never the other suffix; a padding tail
sees itself). Forward outputs and the gradients of q, k and v (the prefix's keys are read by three
segments, so autograd must sum them) must agree.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from megatron.core.transformer import TransformerConfig

from megatron_polar.data.batching import collate_shared
from megatron_polar.model.shared_prefix_attention import SharedPrefixAttentionMixin, varlen_attention

HEADS, GROUPS, DIM = 4, 2, 8


class _Fallback(torch.nn.Module):
    def forward(self, *args, **kwargs):  # a batch without SharedPrefixParams lands here
        return "fallback"


class _Probe(SharedPrefixAttentionMixin, _Fallback):
    """The mixin over a stand-in parent, with the local varlen attention."""

    def __init__(self, config: TransformerConfig, scale: float) -> None:
        super().__init__()
        self.config, self.scale = config, scale

    def _varlen(self, query, key, value, psp):
        return varlen_attention(query, key, value, psp.segments, self.scale)


def _roles(rows, s):
    """Per token of the stream: (pair id or -1-row for padding, role 0 prefix/1 chosen/2 rejected/3 pad,
    position in its own sequence), derived from the pairs alone."""
    pair_id, role, pos = [], [], []
    k = 0
    for r, row in enumerate(rows):
        used = 0
        for chosen, rejected in row:
            p = 0
            while p < min(len(chosen), len(rejected)) - 1 and chosen[p] == rejected[p]:
                p += 1
            for i in range(p):
                pair_id.append(k), role.append(0), pos.append(i)
            for rl, seq in ((1, chosen), (2, rejected)):
                for i in range(p, len(seq)):
                    pair_id.append(k), role.append(rl), pos.append(i)
            used += len(chosen) + len(rejected) - p
            k += 1
        for i in range(s - used):
            pair_id.append(-1 - r), role.append(3), pos.append(i)
    return torch.tensor(pair_id), torch.tensor(role), torch.tensor(pos)


def _dense_reference(q, k, v, rows, s, base: float, scale: float):
    pair_id, role, pos = _roles(rows, s)
    inv = 1.0 / base ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM)
    ang = torch.cat([pos[:, None] * inv] * 2, dim=-1)[:, None, :]  # [t, 1, d]

    def rope(x):
        half = torch.cat((-x[..., DIM // 2 :], x[..., : DIM // 2]), dim=-1)
        return x * ang.cos() + half * ang.sin()

    same_pair = pair_id[:, None] == pair_id[None, :]
    sees_role = (role[None, :] == 0) | (role[None, :] == role[:, None])  # keys: prefix or own part
    earlier = pos[None, :] <= pos[:, None]
    allowed = same_pair & sees_role & earlier
    kq = rope(q).transpose(0, 1)  # [h, t, d]
    kk = rope(k).repeat_interleave(HEADS // GROUPS, dim=1).transpose(0, 1)
    vv = v.repeat_interleave(HEADS // GROUPS, dim=1).transpose(0, 1)
    scores = (kq @ kk.transpose(1, 2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ vv  # [h, t, d]
    return out.transpose(0, 1).reshape(q.shape[0], -1), allowed


def test_shared_prefix_attention_matches_dense_masked_softmax():
    rows = [
        [([3, 4, 5, 6, 7, 9], [3, 4, 5, 8, 9]), ([11, 12, 9], [13, 9])],  # prefix 3; no prefix
        [([20, 21, 22, 9], [20, 21, 23, 24, 25, 9])],  # prefix 2
        [([30, 9], [30, 31, 9])],  # prefix 1 (a sequence of 2 keeps its last token)
    ]
    s = 16
    batch = collate_shared(rows, s)
    t = batch.tokens.shape[1]
    base, scale = 10000.0, DIM**-0.5
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(t, h, DIM, generator=g, dtype=torch.float64) for h in (HEADS, GROUPS, GROUPS))
    for x in (q, k, v):
        x.requires_grad_(True)
    want, allowed = _dense_reference(q, k, v, rows, s, base, scale)
    # the reference mask really is what the layout needs: a suffix never sees the other suffix
    assert allowed.sum() < torch.ones(t, t).tril().sum()

    cfg = TransformerConfig(num_layers=1, hidden_size=HEADS * DIM, num_attention_heads=HEADS)
    psp = batch.packed_seq_params
    inv = 1.0 / base ** (torch.arange(0, DIM, 2, dtype=torch.float64) / DIM)
    table = torch.cat([torch.arange(psp.max_seqlen_kv)[:, None] * inv] * 2, dim=-1)
    psp = replace(psp, rotary_freqs=table[psp.positions][:, None, None, :])
    probe = _Probe(cfg, scale)
    got = probe(q, k, v, None, packed_seq_params=psp)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)

    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    grads_want = torch.autograd.grad(want, (q, k, v), cot)
    grads_got = torch.autograd.grad(got, (q, k, v), cot)
    for a, b in zip(grads_got, grads_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # the prefix keys of the first pair are read by three segments: their gradient is a sum
    assert grads_got[1][:3].abs().sum() > 0

    assert probe(q, k, v, None, packed_seq_params=None) == "fallback"


def test_varlen_masks_stay_segment_sized():
    """Bottom-right alignment: the last query of a suffix sees every key of ``[prefix; suffix]``, the first
    sees the prefix and itself; and a segment's output depends on its own keys only."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    k = torch.randn(5, 2, 4, generator=g, dtype=torch.float64)
    v = torch.randn(5, 2, 4, generator=g, dtype=torch.float64)
    out = varlen_attention(q, k, v, [(0, 3, 0, 5)], softmax_scale=0.5).view(3, 2, 4)
    for i in range(3):
        seen = 3 + i  # prefix of 2 plus suffix tokens 0..i
        w = torch.softmax((q[i][:, None, :] * k[:seen].transpose(0, 1)).sum(-1) * 0.5, dim=-1)
        torch.testing.assert_close(out[i], (w[..., None] * v[:seen].transpose(0, 1)).sum(1))
