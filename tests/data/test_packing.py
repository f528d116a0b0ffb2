"""Training-side bin packing of pairs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from megatron_polar.data.packing import pack_pairs, packing_efficiency, split_oversize


def synthetic_pair_tokens(n: int, seed: int = 0) -> np.ndarray:
    """Realistic mix: prompts uniform 1..1024, responses log-uniform up to 4096, two sequences per pair."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(1, 1025, size=n)

    def response() -> np.ndarray:
        return np.minimum(np.exp(rng.uniform(0, np.log(4096), size=n)).astype(np.int64), 4096)

    ref = response()
    return (2 * prompt + ref + response() + 4) + (2 * prompt + ref + response() + 4)


@pytest.mark.parametrize("row_length", [16384, 32768])
def test_efficiency_and_pairs_stay_whole(row_length):
    sizes = synthetic_pair_tokens(50_000)
    kept, dropped = split_oversize(sizes, row_length)
    assert np.all(sizes[dropped] > row_length) and len(kept) + len(dropped) == len(sizes)
    rows = pack_pairs(sizes[kept], row_length)
    flat = np.concatenate(rows)
    assert np.array_equal(np.sort(flat), np.arange(len(kept)))  # every pair exactly once: never split
    assert max(int(sizes[kept][r].sum()) for r in rows) <= row_length
    assert packing_efficiency(sizes[kept], rows, row_length) >= 0.97


def test_deterministic_and_small_cases():
    sizes = np.array([5, 3, 8, 2, 2])
    a, b = pack_pairs(sizes, 10, window=2), pack_pairs(sizes, 10, window=2)
    assert [r.tolist() for r in a] == [r.tolist() for r in b]
    assert pack_pairs(np.array([], dtype=np.int64), 10) == []
    assert [r.tolist() for r in pack_pairs(np.array([10, 10]), 10)] == [[0], [1]]


def test_oversize_raises():
    with pytest.raises(ValueError, match="split_oversize"):
        pack_pairs(np.array([3, 11]), 10)


def test_fast_on_a_million_pairs():
    sizes = synthetic_pair_tokens(1_000_000, seed=1)
    kept, _ = split_oversize(sizes, 32768)
    t0 = time.perf_counter()
    rows = pack_pairs(sizes[kept], 32768)
    assert time.perf_counter() - t0 < 10.0
    assert packing_efficiency(sizes[kept], rows, 32768) >= 0.97
