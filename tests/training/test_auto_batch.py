"""``auto`` global batch: the nearest multiple of micro-batch x DP, not the next one up."""

from __future__ import annotations

import pytest

from megatron_polar.training.resolve import round_batch


@pytest.mark.parametrize(
    ("samples", "unit", "want"),
    [
        (
            1378.7,
            456,
            1368,
        ),  # 7B on 912 GPUs at ~3.15 pairs per row: 4,309 pairs (rounding up: 1,824 rows, +32%)
        (1600.0, 456, 1824),  # past the midpoint: up
        (100.0, 456, 456),  # never below one sample per rank
        (10.0, 4, 12),  # 10 / 4 = 2.5: halves go up
        (9.9, 4, 8),
    ],
)
def test_round_batch_picks_the_nearest_multiple(samples, unit, want):
    assert round_batch(samples, unit) == want
    assert want % unit == 0
