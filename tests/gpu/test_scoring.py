"""Scoring on a GPU: shared-prefix rows of the local spec and of Transformer Engine against plain rows."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.workers import scoring_local_vs_te
from tests.support.launcher import run_distributed

pytestmark = pytest.mark.gpu


def test_shared_prefix_rows_on_gpu_match_transformer_engine(tmp_path):
    [out] = run_distributed(scoring_local_vs_te, 1, str(tmp_path / "ckpt"))
    # both specs share prefixes by default now (variable-length rows, model/shared_prefix_attention.py)
    assert out["te"]["share_prefix"] is True and out["shared"]["share_prefix"] is True
    te, shared, plain = (torch.tensor(out[k]["rewards"]) for k in ("te", "shared", "plain"))
    assert te.abs().max() > 0.1 and te.unique().numel() > 6  # a random head tells sequences apart
    torch.testing.assert_close(shared, plain, atol=5e-2, rtol=5e-2)  # bf16: different shapes, same math
    torch.testing.assert_close(shared, te, atol=5e-2, rtol=5e-2)
