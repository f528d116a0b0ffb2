"""Transformer Engine paths that only a GPU can run: THD packing and FP8. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.workers import te_packed_vs_padded
from tests.support.launcher import run_distributed

pytestmark = pytest.mark.gpu


def test_thd_packed_rows_match_padded_rows_bf16():
    [out] = run_distributed(te_packed_vs_padded, 1, ["train.precision=bf16"])
    torch.testing.assert_close(out["packed"]["rewards"], out["padded"]["rewards"], atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out["packed"]["head_grad"], out["padded"]["head_grad"], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
def test_fp8_forward_backward_tracks_bf16(recipe):
    [bf16] = run_distributed(te_packed_vs_padded, 1, ["train.precision=bf16"])
    [fp8] = run_distributed(
        te_packed_vs_padded, 1, ["train.precision=bf16", "model.fp8=hybrid", f"model.fp8_recipe={recipe}"]
    )
    for layout in ("padded", "packed"):
        got, want = fp8[layout]["rewards"], bf16[layout]["rewards"]
        assert torch.isfinite(got).all()
        cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
        assert cos > 0.98, (layout, float(cos))


def test_thd_fused_rope_matches_padded_rows_without_host_syncs():
    from tests.gpu.workers import te_thd_rope_fused

    [out] = run_distributed(te_thd_rope_fused, 1, ["train.precision=bf16"])
    assert out["table"] == out["max_seqlen"] < 2 * 1024
    torch.testing.assert_close(out["packed"], out["padded"], atol=3e-2, rtol=3e-2)
    rope_syncs = [s for s in out["syncs"] if "rope" in s.lower() or "item" in s.lower()]
    assert not rope_syncs, rope_syncs


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs for TP2")
def test_sequence_parallel_reward_rows_match_tp2_without_sp():
    from tests.gpu.workers import te_sequence_parallel_rewards

    [sp, _] = run_distributed(te_sequence_parallel_rewards, 2, True, ["train.precision=bf16"])
    [plain, _] = run_distributed(te_sequence_parallel_rewards, 2, False, ["train.precision=bf16"])
    torch.testing.assert_close(sp["rewards"], plain["rewards"], atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(sp["head_grad"], plain["head_grad"], atol=5e-2, rtol=5e-2)
