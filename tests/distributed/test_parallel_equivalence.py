"""TP, PP, VPP and DP layouts reproduce the single-process rewards, loss and gradients (fp32, gloo)."""

from __future__ import annotations

import pytest
import torch

from tests.support.launcher import run_distributed
from tests.support.parity_workers import parity_step, random_pairs

pytestmark = pytest.mark.distributed

SEQ = 64
PAIRS = random_pairs(8, vocab=500, lo=6, hi=30, seed=0)


@pytest.fixture(scope="module")
def reference():
    """TP=1, PP=1, one process: the independent reference every layout is compared with."""
    [ref] = run_distributed(parity_step, 1, [], None, PAIRS, 4, "padded", SEQ)
    return ref


def _last_stage_rewards(results):
    """Rewards in global micro-batch order from the last-stage ranks of every DP replica."""
    by_dp = {}
    for r in results:
        if r["last_stage"] and r["rewards"] is not None:
            by_dp.setdefault(r["dp_rank"], r["rewards"])
    return by_dp


def _assert_close_state(got: dict, want: dict, atol: float, rtol: float = 1e-4):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize(
    "world,overrides",
    [
        (2, ["parallel=tp2"]),
        (2, ["parallel=pp2"]),
        (4, ["parallel=tp2pp2"]),
        (2, ["parallel=pp2", "parallel.virtual_pipeline_model_parallel_size=2"]),
    ],
    ids=["tp2", "pp2", "tp2pp2", "pp2-vpp2"],
)
def test_layout_matches_single_process(reference, world, overrides):
    results = run_distributed(parity_step, world, overrides, reference["weights"], PAIRS, 4, "padded", SEQ)
    [rewards] = _last_stage_rewards(results).values()
    torch.testing.assert_close(rewards, reference["rewards"], atol=1e-5, rtol=1e-5)
    for r in results:
        assert r["pairs"] == len(PAIRS)
        assert r["metrics"]["loss"] == pytest.approx(reference["metrics"]["loss"], abs=1e-6)
        _assert_close_state(r["grads"], reference["grads"], atol=1e-6)


def test_data_parallel_and_micro_batch_split_give_same_loss(reference):
    """1 x 8 pairs, 4 x 2 pairs and DP=2 x (2 x 2 pairs) are one batch: same loss, same gradients."""
    [one_mb] = run_distributed(parity_step, 1, [], reference["weights"], PAIRS, 1, "padded", SEQ)
    dp = run_distributed(parity_step, 2, [], reference["weights"], PAIRS, 4, "padded", SEQ)
    for r in [one_mb, *dp]:
        assert r["pairs"] == len(PAIRS)
        assert r["metrics"]["loss"] == pytest.approx(reference["metrics"]["loss"], abs=1e-6)
        assert r["metrics"]["accuracy"] == pytest.approx(reference["metrics"]["accuracy"])
        _assert_close_state(r["grads"], reference["grads"], atol=1e-6)
    # The DP replicas saw disjoint halves of the batch: their rewards are the reference's halves.
    got = torch.cat([dp[0]["rewards"][:2], dp[1]["rewards"][:2], dp[0]["rewards"][2:], dp[1]["rewards"][2:]])
    torch.testing.assert_close(got, reference["rewards"], atol=1e-5, rtol=1e-5)


def test_packed_rows_match_padded_rows(reference):
    """Two pairs per packed row (block-diagonal mask) give the padded rewards and gradients."""
    [packed] = run_distributed(parity_step, 1, [], reference["weights"], PAIRS, 4, "packed", 2 * SEQ)
    torch.testing.assert_close(packed["rewards"], reference["rewards"], atol=1e-5, rtol=1e-5)
    assert packed["metrics"]["loss"] == pytest.approx(reference["metrics"]["loss"], abs=1e-6)
    _assert_close_state(packed["grads"], reference["grads"], atol=1e-6)


def test_packed_rows_at_tp2_pp2(reference):
    results = run_distributed(
        parity_step, 4, ["parallel=tp2pp2"], reference["weights"], PAIRS, 4, "packed", 2 * SEQ
    )
    [rewards] = _last_stage_rewards(results).values()
    torch.testing.assert_close(rewards, reference["rewards"], atol=1e-5, rtol=1e-5)
    for r in results:
        _assert_close_state(r["grads"], reference["grads"], atol=1e-6)
