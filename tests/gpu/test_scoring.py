"""Scoring on a GPU: the local spec's shared-prefix rows against Transformer Engine's plain rows."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.workers import scoring_local_vs_te
from tests.support.launcher import run_distributed

pytestmark = pytest.mark.gpu


def test_shared_prefix_rows_on_gpu_match_transformer_engine(tmp_path):
    [out] = run_distributed(scoring_local_vs_te, 1, str(tmp_path / "ckpt"))
    assert out["te"]["share_prefix"] is False and out["shared"]["share_prefix"] is True
    te, shared, plain = (torch.tensor(out[k]["rewards"]) for k in ("te", "shared", "plain"))
    assert te.abs().max() > 0.1 and te.unique().numel() > 6  # a random head tells sequences apart
    torch.testing.assert_close(shared, plain, atol=5e-2, rtol=5e-2)  # bf16: different shapes, same math
    torch.testing.assert_close(shared, te, atol=5e-2, rtol=5e-2)
