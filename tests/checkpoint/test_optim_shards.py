"""Distributed-optimizer state saved per rank: blocks tile each rank's range exactly, a rank hands the
writer only its own shard (half of what megatron-core's ``fully_reshardable`` allocates at DP2), and the
state reloads element for element at other TP/PP/DP layouts, in both directions with megatron-core's own
``fully_reshardable`` loader and saver."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_polar.checkpoint.optim_shards import flat_range_boxes
from tests.checkpoint import optim_workers
from tests.support.launcher import run_distributed


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (4, 1, 3), (1,), (6, 1)])
def test_flat_range_boxes_tile_every_range(shape):
    n = math.prod(shape)
    full = torch.arange(n).view(shape)
    for start in range(n):
        for end in range(start + 1, n + 1):
            boxes = flat_range_boxes(start, end, shape)
            assert len(boxes) <= max(1, 2 * len(shape) - 1)
            got = [
                full[tuple(slice(o, o + s) for o, s in zip(offset, size))].reshape(-1)
                for offset, size in boxes
            ]
            assert torch.cat(got).tolist() == list(range(start, end)), (start, end, boxes)


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


@pytest.mark.distributed
@pytest.mark.parametrize(
    "save_layout,save_megatron,load_layout,load_megatron",
    [
        ("single", False, "tp2", False),  # DP2 -> TP2: ours both ways
        ("tp2", False, "single", True),  # TP2 -> DP2: megatron-core's loader reads our blocks
        ("single", True, "pp2", False),  # DP2 -> PP2: we read megatron-core's gathered format
    ],
)
def test_optimizer_state_reloads_at_another_layout(
    tmp_path, save_layout, save_megatron, load_layout, load_megatron
):
    root = str(tmp_path / "ckpt")
    saved = run_distributed(optim_workers.save_worker, 2, save_layout, root, save_megatron, timeout=600)
    if save_layout == "single":  # DP2: each rank holds half the optimizer state
        for r in saved:
            assert (
                r["ours_bytes"] == 3 * 4 * r["own_numel"]
            )  # fp32 param, exp_avg, exp_avg_sq: own shard only
            assert r["megatron_bytes"] >= 3 * 4 * r["slice_numel"]  # the gathered TP/PP slice
            assert r["ours_bytes"] * 2 <= r["megatron_bytes"] * 1.01
    loaded = run_distributed(optim_workers.load_worker, 2, load_layout, root, load_megatron, timeout=600)
    assert sum(r["checked"] for r in loaded) > 0
    for r in loaded:
        _same_weights(r["weights"], saved[0]["weights"])
