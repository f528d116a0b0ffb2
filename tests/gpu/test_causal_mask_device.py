"""``causal_mask`` on an accelerator builds its block per call; it must equal the cached host mask, and
the local varlen attention on the GPU must match the CPU one. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from megatron_polar.data.segments import causal_mask
from megatron_polar.model.shared_prefix_attention import varlen_attention

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("q_len,kv_len", [(1, 1), (4, 4), (3, 9), (257, 300)])
def test_device_block_equals_the_host_block(q_len, kv_len):
    got = causal_mask(q_len, kv_len, device="cuda")
    assert got.is_cuda and got.dtype == torch.bool
    assert torch.equal(got.cpu(), causal_mask(q_len, kv_len))


def test_varlen_attention_on_gpu_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(n, h, 8, generator=gen, dtype=torch.float64) for n, h in ((9, 4), (14, 2), (14, 2))
    )
    segments = [(0, 4, 0, 4), (4, 7, 4, 9), (7, 9, 9, 14)]  # a prefix, then suffixes over [prefix; suffix]
    want = varlen_attention(q, k, v, segments, softmax_scale=0.3)
    got = varlen_attention(q.cuda(), k.cuda(), v.cuda(), segments, softmax_scale=0.3)
    torch.testing.assert_close(got.cpu(), want, atol=1e-10, rtol=1e-10)
