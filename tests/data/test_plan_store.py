"""Shared epoch plans: one writer, many readers, reused on restart, never used when stale or corrupt."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from megatron_polar.data import plan_store
from megatron_polar.data.plan_store import PlanStore, check_plan
from megatron_polar.data.prefetch import BatchPrefetcher
from megatron_polar.data.sampler import PairBatches, PoolRecipe, blend
from megatron_polar.utils.errors import PlanError
from tests.support.launcher import process_context


class _LengthTable:
    """A dataset stand-in: pair lengths and tokens that encode the pair id; ``fingerprint`` as a build's."""

    def __init__(self, n: int, seed: int = 0, version: str = "v1"):
        self.lengths = np.random.default_rng(seed).integers(5, 120, size=(n, 2))
        self.prefix, self.fingerprint = f"table-{seed}", f"{seed}-{n}-{version}"

    def __len__(self) -> int:
        return len(self.lengths)

    def pair_lengths(self) -> np.ndarray:
        return self.lengths

    def pair(self, i: int):
        c, r = self.lengths[i]
        return np.full(c, 2 * i % 500 + 1), np.full(r, (2 * i + 1) % 500 + 1)


def _recipe(datasets, weights=(1.0, 0.5)) -> PoolRecipe:
    key = {"datasets": [ds.fingerprint for ds in datasets], "weights": list(weights)}
    subsets = [np.arange(len(ds)) for ds in datasets]
    return PoolRecipe("train", datasets, key, lambda: blend(datasets, list(weights), subsets, seed=5))


def _batches(recipe, store, dp_rank=0, dp_size=1, layout="packed") -> PairBatches:
    return PairBatches(
        recipe,
        layout=layout,
        seq_length=256,
        micro_batch_size=1,
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=3,
        window=64,
        global_batch_size=4,
        store=store,
    )


def _tables():
    return [_LengthTable(300, seed=0), _LengthTable(200, seed=1)]


def _digest(data: PairBatches, steps=(0, 7)) -> tuple:
    plan = data.plan(0)
    tokens = [b.tokens.numpy().tobytes() for s in steps for b in data.step_batches(s)]
    return np.asarray(plan.pair_ids).tobytes(), np.asarray(plan.row_offsets).tobytes(), tokens


def _rank(root, rank, barrier, out):
    store = PlanStore(root, is_writer=rank == 0, barrier=barrier.wait)
    data = _batches(_recipe(_tables()), store, dp_rank=rank, dp_size=2)
    out.put((rank, store.built, _digest(data)))


@pytest.mark.distributed
def test_one_writer_two_ranks_read_the_plan_a_single_process_computes(tmp_path):
    # Not a fork of pytest: its process holds torch's thread pools, and a forked child can deadlock on a
    # lock another thread held (seen: both ranks stuck in futex_wait, and the run hung at exit joining
    # them). The launcher's context forks from a single-threaded, preloaded forkserver (spawn with a GPU).
    ctx = process_context()
    barrier, out = ctx.Barrier(2, timeout=120), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(tmp_path, r, barrier, out), daemon=True) for r in range(2)]
    try:
        for p in procs:
            p.start()
        got = dict((r, (built, digest)) for r, built, digest in (out.get(timeout=180) for _ in procs))
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert got[0][0] == 1 and got[1][0] == 0, "rank 0 builds the plan once, rank 1 only reads it"
    for rank in range(2):
        alone = _batches(_recipe(_tables()), PlanStore(None), dp_rank=rank, dp_size=2)
        assert got[rank][1] == _digest(alone)


def test_plan_is_reused_on_restart_and_memory_mapped(tmp_path):
    first = _batches(_recipe(_tables()), PlanStore(tmp_path))
    assert first.store.built == 1
    restart = _batches(_recipe(_tables()), PlanStore(tmp_path))
    assert restart.store.built == 0
    assert isinstance(restart.plan(0).pair_ids, np.memmap)
    assert _digest(restart) == _digest(first)
    # Other inputs make another plan beside it, never a reuse.
    other = _batches(_recipe(_tables(), weights=(1.0, 2.0)), PlanStore(tmp_path))
    assert other.store.built == 1 and _digest(other) != _digest(first)


def test_plan_of_a_rebuilt_dataset_is_stale(tmp_path):
    first = _batches(_recipe(_tables()), PlanStore(tmp_path))
    changed = _tables()
    changed[1] = _LengthTable(200, seed=1, version="rebuilt")  # same path, new content
    changed[1].lengths = np.random.default_rng(9).integers(5, 120, size=(200, 2))
    again = _batches(_recipe(changed), PlanStore(tmp_path))
    assert again.store.built == 1
    assert len(list(tmp_path.glob("train-*"))) == 2 and _digest(again) != _digest(first)


def _plan_dir(root):
    (path,) = [p for p in root.glob("train-*") if not p.name.startswith(".")]
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta_key", "meta_garbage", "missing"])
def test_damaged_plan_is_rebuilt_by_the_writer_and_refused_by_a_reader(tmp_path, damage):
    want = _digest(_batches(_recipe(_tables()), PlanStore(tmp_path)))
    path = _plan_dir(tmp_path)
    ids = path / "pair_ids.npy"
    if damage == "truncate":
        os.truncate(ids, ids.stat().st_size - 8)
    elif damage == "flip":
        raw = bytearray(ids.read_bytes())
        raw[-3] ^= 0xFF
        ids.write_bytes(bytes(raw))
    elif damage == "meta_key":
        meta = json.loads((path / "meta.json").read_text())
        meta["key"]["epoch"] = 9
        (path / "meta.json").write_text(json.dumps(meta))
    elif damage == "meta_garbage":
        (path / "meta.json").write_text('{"format": ')
    else:
        ids.unlink()
    if damage != "flip":  # readers check sizes and keys; checksums are the writer's job
        with pytest.raises(PlanError):
            _batches(_recipe(_tables()), PlanStore(tmp_path, is_writer=False))
    rebuilt = _batches(_recipe(_tables()), PlanStore(tmp_path))
    assert rebuilt.store.built == 1
    assert _digest(rebuilt) == want
    assert check_plan(path, rebuilt.plan_key(0), full=True) is None


def _write_then_die(root, dies_after):
    if dies_after == "first window":  # killed while the pair ids stream to disk
        real_append = plan_store.ArrayStream.append

        def dying_append(self, chunk):
            real_append(self, chunk)
            os._exit(9)

        plan_store.ArrayStream.append = dying_append
    else:  # killed right after one file of the plan is on disk
        real_sync = plan_store._sync_file

        def dying_sync(f):
            real_sync(f)
            if str(getattr(f, "name", "")).endswith(dies_after):
                os._exit(9)

        plan_store._sync_file = dying_sync
    _batches(_recipe(_tables()), PlanStore(root))


@pytest.mark.distributed
@pytest.mark.parametrize("dies_after", ["first window", "pair_ids.npy", "row_offsets.npy", "meta.json"])
def test_killed_write_leaves_nothing_that_looks_complete(tmp_path, dies_after):
    proc = process_context().Process(target=_write_then_die, args=(tmp_path, dies_after), daemon=True)
    proc.start()
    proc.join(timeout=180)
    if proc.is_alive():
        proc.kill()
    assert proc.exitcode == 9
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")], (
        "only a hidden temp dir may remain"
    )
    data = _batches(_recipe(_tables()), PlanStore(tmp_path))
    assert data.store.built == 1
    assert _digest(data) == _digest(_batches(_recipe(_tables()), PlanStore(None)))


def test_writer_crc_reads_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(plan_store, "_CHUNK", 64)  # many chunks: the streaming checksum must chain them
    first = _batches(_recipe(_tables()), PlanStore(tmp_path))
    again = _batches(_recipe(_tables()), PlanStore(tmp_path))
    assert first.store.built == 1 and again.store.built == 0


def test_prefetched_batches_equal_inline_ones_and_the_thread_stops():
    data = _batches(_recipe(_tables()), PlanStore(None))
    inline = [[b.tokens for b in data.step_batches(s)] for s in range(6)]
    with BatchPrefetcher(data, enabled=True, end=6) as pre:
        got = [[b.tokens for b in pre.get(s)] for s in range(6)]
        assert pre.last_build_s > 0 and pre.last_wait_s >= 0
    assert all(all(np.array_equal(a, b) for a, b in zip(x, y)) for x, y in zip(inline, got))
    assert not [t for t in threading.enumerate() if t.name.startswith("batch-prefetch")]
    pre.close()  # twice is fine
    with BatchPrefetcher(data, enabled=True) as pre:  # out-of-order requests fall back to inline builds
        assert all(np.array_equal(a.tokens, b) for a, b in zip(pre.get(3), inline[3]))
        assert all(np.array_equal(a.tokens, b) for a, b in zip(pre.get(1), inline[1]))


def test_padded_layout_plan_round_trips(tmp_path):
    first = _batches(_recipe(_tables()), PlanStore(tmp_path), layout="padded")
    again = _batches(_recipe(_tables()), PlanStore(tmp_path), layout="padded")
    assert again.store.built == 0 and again.plan(0).row_offsets is None
    a = [b.tokens for s in range(3) for b in first.step_batches(s)]
    b = [b.tokens for s in range(3) for b in again.step_batches(s)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
