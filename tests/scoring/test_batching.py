"""Micro-batch planning, sequence collation and the dynamic batcher (no model needed)."""

from __future__ import annotations

import threading
import time

import pytest

from megatron_polar.scoring.batcher import BatcherClosed, DynamicBatcher
from megatron_polar.scoring.collate import collate_sequences, padded_length, plan_micro_batches


def test_plan_respects_budget_and_covers_everything():
    lengths = [5, 100, 33, 17, 64, 64, 2, 250, 9]
    plan = plan_micro_batches(lengths, batch_tokens=256, max_sequences=3, pad_multiple=16)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    for batch in plan:
        width = padded_length(max(lengths[i] for i in batch), 16)
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * width <= 256
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    assert plan == plan_micro_batches(lengths, batch_tokens=256, max_sequences=3, pad_multiple=16)


def test_collate_sequences_layout():
    batch = collate_sequences([[1, 2, 3], [4, 5, 6, 7, 8]], pad_multiple=8)
    assert batch.tokens.shape == (2, 8)
    assert batch.reward_index.tolist() == [[2], [8 + 4]]
    assert batch.attention_mask is None  # causal attention needs no mask tensor
    batch = collate_sequences([[1, 2, 3], [4, 5, 6, 7, 8]], pad_multiple=8, explicit_mask=True)
    assert batch.attention_mask.shape == (2, 1, 8, 8)
    assert bool(batch.attention_mask[0, 0, 0, 1]) and not bool(batch.attention_mask[0, 0, 1, 0])
    with pytest.raises(ValueError):
        collate_sequences([[]])


def _sum_fn(calls):
    def fn(seqs):
        calls.append(len(seqs))
        time.sleep(0.002)
        return [float(sum(s)) for s in seqs]

    return fn


def test_batcher_splits_and_limits_batches():
    calls: list[int] = []
    batcher = DynamicBatcher(_sum_fn(calls), max_batch=4, max_wait_ms=1)
    try:
        seqs = [[i, i] for i in range(10)]
        assert batcher.submit(seqs).result(timeout=10) == [2.0 * i for i in range(10)]
        assert max(calls) <= 4 and sum(calls) == 10
        assert batcher.submit([]).result(timeout=1) == []
    finally:
        batcher.close()
    with pytest.raises(BatcherClosed):
        batcher.submit([[1]])


def test_batcher_concurrent_results_are_not_mixed():
    calls: list[int] = []
    batcher = DynamicBatcher(_sum_fn(calls), max_batch=16, max_wait_ms=20)
    results: dict[int, list[float]] = {}

    def client(k: int) -> None:
        out = []
        for j in range(10):
            seqs = [[k * 1000 + j, c] for c in range(1 + (k + j) % 3)]
            out.append(batcher.submit(seqs).result(timeout=10) == [float(sum(s)) for s in seqs])
        results[k] = out

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert all(all(v) for v in results.values()) and len(results) == 8
    assert max(calls) > 1, "concurrent work should have been batched together"


def test_batcher_propagates_errors_and_keeps_running():
    def fn(seqs):
        if any(s[0] < 0 for s in seqs):
            raise RuntimeError("boom")
        return [1.0] * len(seqs)

    batcher = DynamicBatcher(fn, max_batch=8, max_wait_ms=0)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit([[-1]]).result(timeout=10)
        assert batcher.submit([[1], [2]]).result(timeout=10) == [1.0, 1.0]
    finally:
        batcher.close()


def test_close_drains_pending_work():
    batcher = DynamicBatcher(_sum_fn([]), max_batch=1, max_wait_ms=0)
    futures = [batcher.submit([[i]]) for i in range(20)]
    batcher.close(timeout=30)
    assert [f.result(timeout=0) for f in futures] == [[float(i)] for i in range(20)]


def test_batcher_does_not_wait_when_nobody_is_arriving():
    batcher = DynamicBatcher(_sum_fn([]), max_batch=64, max_wait_ms=2000)
    try:
        t0 = time.monotonic()
        assert batcher.submit([[1]]).result(timeout=10) == [1.0]
        assert time.monotonic() - t0 < 1.0  # no request inside incoming(): no reason to wait 2 s
        calls: list[int] = []
        batcher.score_fn = _sum_fn(calls)
        with batcher.incoming():  # a request being encoded: the first one's batch waits for it
            first = batcher.submit([[1]])
            time.sleep(0.05)
            second = batcher.submit([[2]])
        assert first.result(timeout=10) == [1.0] and second.result(timeout=10) == [2.0]
        assert calls == [2]
    finally:
        batcher.close()
