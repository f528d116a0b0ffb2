"""Transformer Engine runs shared-prefix rows (THD, separate cu_seqlens_q/kv, padding_causal_bottom_right)
as its unshared rows: same rewards and gradients within bf16 noise. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.shared_prefix_workers import te_shared_vs_unshared
from tests.support.launcher import run_distributed

pytestmark = pytest.mark.gpu


def test_te_shared_rows_match_te_unshared_rows_bf16():
    [out] = run_distributed(te_shared_vs_unshared, 1, ["train.precision=bf16"])
    for ref, shared in (("padded", "shared_padded"), ("packed", "shared_packed")):
        want, got = out[ref], out[shared]
        torch.testing.assert_close(got["rewards"], want["rewards"], atol=3e-2, rtol=3e-2)
        for name, g in want["grads"].items():
            h = got["grads"][name]
            assert torch.isfinite(h).all(), name
            cos = torch.nn.functional.cosine_similarity(h.flatten(), g.flatten(), dim=0)
            assert cos > 0.99, (ref, name, float(cos))
