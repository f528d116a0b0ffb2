"""Epoch plans packed by several processes and streamed to disk equal the one-process, in-memory plan."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_polar.data import epoch_plan
from megatron_polar.data.epoch_plan import compute_epoch_plan
from megatron_polar.data.plan_store import ArrayStream, PlanStore, check_plan, default_workers
from megatron_polar.data.sampler import PairPool


def _pool(n: int = 6000, seed: int = 0) -> PairPool:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 700, size=(n, 2)).astype(np.int32)
    source = (rng.random(n) < 0.3).astype(np.uint8)
    index = rng.integers(0, 5000, size=n).astype(np.uint32)
    return PairPool(datasets=[None, None], source=source, index=index, lengths=lengths)


_OFFSETS = np.array([0, 5000, 10000], dtype=np.int64)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_forked_workers_and_streaming_write_the_serial_plan(tmp_path, monkeypatch, layout):
    pool = _pool()
    seq_length = 1024 if layout == "packed" else 600  # both drop some pairs
    args = (pool, layout, seq_length, 3, 1, 500, True, _OFFSETS)
    serial, serial_meta = compute_epoch_plan(*args, workers=1)
    assert serial_meta["build"]["workers"] == 1
    monkeypatch.setattr(epoch_plan, "PARALLEL_MIN_PAIRS", 1)  # small enough to fork here
    forked, meta = compute_epoch_plan(*args, workers=2)
    assert meta["build"]["workers"] == 2 and meta["build"]["windows"] > 2
    assert serial.keys() == forked.keys()
    for name in serial:
        assert serial[name].dtype == forked[name].dtype
        assert np.array_equal(serial[name], forked[name]), name
    assert {k: v for k, v in meta.items() if k != "build"} == {
        k: v for k, v in serial_meta.items() if k != "build"
    }
    assert meta["dropped"] > 0  # the compaction ran (some pairs exceed a row)

    # Through a store: pair_ids streamed to disk window by window, same bytes, checksums valid.
    store = PlanStore(tmp_path, workers=2)
    key = {"case": layout}
    stored = store.get(
        "train",
        key,
        lambda sink: compute_epoch_plan(*args, workers=store.workers, sink=sink),
        stream=True,
    )
    assert isinstance(stored.arrays["pair_ids"], np.memmap)
    for name in serial:
        assert np.array_equal(serial[name], stored.arrays[name]), name
    assert check_plan(store.path("train", key), key, full=True) is None


def test_stream_refuses_a_length_other_than_declared(tmp_path):
    stream = ArrayStream(tmp_path / "a.npy", np.uint32, 4)
    stream.append(np.arange(3))
    with pytest.raises(ValueError, match=r"a\.npy: 3 items written, 4 declared"):
        stream.close()
    stream = ArrayStream(tmp_path / "b.npy", np.uint32, 2)
    with pytest.raises(ValueError, match=r"b\.npy: more than the 2 items"):
        stream.append(np.arange(3))


def test_default_workers_follow_slurm_and_affinity(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    free = default_workers()
    assert free >= 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert default_workers() == 1
    assert PlanStore(None, workers=3).workers == 3 and PlanStore(None).workers == 1
