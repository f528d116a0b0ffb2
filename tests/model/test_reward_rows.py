"""The reward head reads only the reward rows: under sequence parallelism each TP rank picks the rows in
its sequence shard and one all-reduce of ``[n, h]`` replaces the all-gather of ``[s, b, h]``."""

from __future__ import annotations

import pytest
import torch

from megatron_polar.model.reward_model import gather_reward_rows
from tests.model.workers import reward_rows_tp
from tests.support.launcher import run_distributed


def test_without_sequence_parallelism_rows_are_indexed_directly():
    hidden = torch.randn(7, 3, 4)
    flat = torch.tensor([0, 6, 7 + 2, 2 * 7 + 6])
    want = hidden.transpose(0, 1).reshape(-1, 4)[flat]
    assert torch.equal(gather_reward_rows(hidden, flat, sequence_parallel=False), want)


@pytest.mark.distributed
def test_tp2_shard_selection_equals_full_gather_forward_and_backward():
    results = run_distributed(reward_rows_tp, 2, timeout=900)
    for r in results:
        assert torch.equal(r["rows"]["picked"], r["direct"])  # exact: one rank's value plus zeros
        assert torch.equal(r["rows"]["picked"], r["gather"]["picked"])
        assert torch.equal(r["rows"]["grad"], r["gather"]["grad"])
        assert r["rows"]["grad"].abs().sum() > 0  # each shard owns some reward rows
