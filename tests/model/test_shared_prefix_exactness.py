"""Shared-prefix rows give the rewards, loss and every gradient of unshared rows (fp32, real megatron-core
on gloo), padded and packed, at TP1, TP2, PP2, TP2xPP2 and DP2, with and without recomputation.

Each run computes the unshared layouts (one sequence per row, and the block-diagonal packed rows) as the
reference in the same process, on the same weights, then the shared layouts; only the layout differs.
"""

from __future__ import annotations

import pytest
import torch

from tests.model.shared_prefix_workers import shared_prefix_pairs, shared_vs_unshared
from tests.support.launcher import run_distributed

pytestmark = pytest.mark.distributed

SEQ = 48  # sequences are at most 23 tokens: two pairs fit a packed row of 2 * SEQ
PAIRS = shared_prefix_pairs(8, vocab=500, seed=0)


def _check(results: list[dict]) -> None:
    last = [r for r in results if r["last_stage"]]
    assert last, "no last pipeline stage reported"
    for r in results:
        for ref, shared in (("padded", "shared_padded"), ("packed", "shared_packed")):
            want, got = r[ref], r[shared]
            assert got["tokens"] < want["tokens"]  # the prefix really is placed once
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
            assert got["grads"].keys() == want["grads"].keys()
            for name, g in want["grads"].items():
                assert g.abs().sum() > 0, name  # every parameter takes part
                torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-5, msg=name)
            if r["last_stage"]:
                torch.testing.assert_close(got["rewards"], want["rewards"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "world,overrides",
    [
        (1, []),
        (
            2,
            [
                "parallel=tp2",
                "model.recompute_granularity=full",
                "model.recompute_method=uniform",
                "model.recompute_num_layers=1",
            ],
        ),
        (2, ["parallel=pp2", "model.recompute_granularity=selective"]),
        (4, ["parallel=tp2pp2"]),
        (2, []),  # data parallelism takes the processes that TP and PP leave
    ],
    ids=["tp1", "tp2-full-recompute", "pp2-selective-recompute", "tp2pp2", "dp2"],
)
def test_shared_rows_equal_unshared_rows(world, overrides):
    _check(run_distributed(shared_vs_unshared, world, overrides, PAIRS, 2, SEQ, timeout=900))
