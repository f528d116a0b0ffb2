"""Training-side dataset: epochs that pack into different row counts, blending, DP sharding."""

from __future__ import annotations

import numpy as np

from megatron_polar.data.sampler import PairBatches, PairPool


class _FakeDataset:
    """Pairs of random lengths; tokens encode (pair, side) so batches can be traced back."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.lengths = rng.integers(5, 120, size=(n, 2))

    def __len__(self) -> int:
        return len(self.lengths)

    def pair(self, i: int):
        c, r = self.lengths[i]
        return np.full(c, 2 * i % 500 + 1), np.full(r, (2 * i + 1) % 500 + 1)


def _pool(n: int) -> PairPool:
    ds = _FakeDataset(n)
    return PairPool(datasets=[ds], source=np.zeros(n, np.int32), index=np.arange(n), lengths=ds.lengths)


def _batches(pool, **kw) -> PairBatches:
    args = dict(
        layout="packed", seq_length=256, global_batch_size=4, micro_batch_size=1, dp_rank=0, dp_size=1, seed=3
    )
    return PairBatches(pool, **{**args, **kw})


def test_epochs_with_different_row_counts_are_walked_without_gaps():
    data = _batches(_pool(250), window=8)  # small windows: each shuffle packs differently
    counts = [len(data.plan(e)) for e in range(4)]
    assert len(set(counts)) > 1, "the test needs epochs that pack into different numbers of rows"
    total = sum(c // 4 for c in counts[:3])
    for step in range(total + 2):  # crosses two epoch boundaries
        batches = data.step_batches(step)
        assert len(batches) == 4 and all(b.tokens.shape == (1, 256) for b in batches)


def test_data_parallel_ranks_split_each_step_disjointly():
    pool = _pool(200)
    whole = _batches(pool, global_batch_size=4)
    ranks = [_batches(pool, global_batch_size=4, dp_rank=r, dp_size=2) for r in range(2)]
    for step in (0, 5):
        want = [b.tokens for b in whole.step_batches(step)]
        got = [b.tokens for r in ranks for b in r.step_batches(step)]
        assert all(np.array_equal(w, g) for w, g in zip(want, got))


def test_padded_layout_drops_and_counts_sequences_longer_than_a_row():
    data = _batches(_pool(100), layout="padded", seq_length=100)
    plan = data.plan(0)
    assert plan.dropped == int((_FakeDataset(100).lengths.max(axis=1) > 100).sum()) > 0
    assert len(plan) == 100 - plan.dropped


def test_packed_rows_are_not_ordered_by_pair_length():
    """Packing sorts each window by length; the epoch order of the rows must not inherit that."""
    n = 400
    lengths = np.where((np.arange(n) % 4 == 0)[:, None], 100, 10) * np.ones((n, 2), dtype=np.int64)
    ds = _FakeDataset(n)
    ds.lengths = lengths
    pool = PairPool(datasets=[ds], source=np.zeros(n, np.int32), index=np.arange(n), lengths=lengths)
    plan = _batches(pool, window=n).plan(0)
    small_rows = [s for s in range(len(plan)) if lengths[plan.sample_pairs(s)].max() == 10]
    assert 3 <= len(small_rows) < len(plan) // 4
    # Best-fit-decreasing opens the rows of short pairs last; after the shuffle they are spread out.
    assert min(small_rows) < len(plan) - len(small_rows) - 10, small_rows
