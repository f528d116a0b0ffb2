"""Dynamic batching: many request threads, one worker thread that owns the model.

Handlers :meth:`DynamicBatcher.submit` a list of token sequences and wait on the returned future. The
worker takes the oldest pending work, then keeps collecting sequences from later work until it holds
``max_batch`` sequences or ``max_wait_ms`` have passed since it started collecting (or nothing is queued
and no request is on its way, see :meth:`DynamicBatcher.incoming`), scores them in one
call and hands each request its own slice of the results. A request larger than ``max_batch`` is split
over consecutive batches, so ``max_batch=1`` scores strictly one sequence at a time.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future

from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

ScoreFn = Callable[[Sequence[Sequence[int]]], list[float]]


class BatcherClosed(RuntimeError):
    """Work submitted after :meth:`DynamicBatcher.close`."""


class _Work:
    """One request's sequences, the rewards filled in so far and the future to resolve."""

    __slots__ = ("sequences", "rewards", "taken", "done", "future")

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.sequences = sequences
        self.rewards: list[float] = [0.0] * len(sequences)
        self.taken = 0  # sequences handed to a batch
        self.done = 0  # sequences scored
        self.future: Future[list[float]] = Future()


class DynamicBatcher:
    """Coalesces concurrent scoring work into batches of at most ``max_batch`` sequences.

    Attributes:
        batches, sequences: counts of forward calls and sequences scored (for metrics and tests).
    """

    def __init__(self, score_fn: ScoreFn, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.score_fn = score_fn
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.batches = 0
        self.sequences = 0
        self._pending: collections.deque[_Work] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._arriving = 0  # requests inside incoming()
        self._thread = threading.Thread(target=self._run, name="polar-batcher", daemon=True)
        self._thread.start()

    def submit(self, sequences: Sequence[Sequence[int]]) -> Future[list[float]]:
        """Queue ``sequences``; the future resolves to their rewards in order (or the scoring error)."""
        work = _Work(sequences)
        if not sequences:
            work.future.set_result([])
            return work.future
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is shutting down")
            self._pending.append(work)
            self._cond.notify()
        return work.future

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, finish everything already queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        """Sequences queued and not yet handed to a batch."""
        with self._cond:
            return sum(len(w.sequences) - w.taken for w in self._pending)

    def _take(self, room: int, batch: list[tuple[_Work, int]]) -> int:
        """Move up to ``room`` sequences from the queue head into ``batch`` (lock held)."""
        moved = 0
        while self._pending and moved < room:
            work = self._pending[0]
            n = min(room - moved, len(work.sequences) - work.taken)
            batch.extend((work, work.taken + k) for k in range(n))
            work.taken += n
            moved += n
            if work.taken == len(work.sequences):
                self._pending.popleft()
        return moved

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request that is being parsed and encoded and will :meth:`submit` shortly.

        While no such request exists and the queue is empty, waiting for the batch to fill is pointless:
        the worker starts the batch at once instead of sitting out ``max_wait_ms`` (closed-loop clients
        would otherwise pay the full wait on every batch).
        """
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()

    def _collect(self) -> list[tuple[_Work, int]] | None:
        """The next batch, or None once closed and drained."""
        batch: list[tuple[_Work, int]] = []
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait_s
            while True:
                self._take(self.max_batch - len(batch), batch)
                if len(batch) >= self.max_batch or self._closed:
                    break
                if not self._pending and self._arriving == 0:
                    break  # nothing queued and nobody about to submit
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
        return batch

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            try:
                rewards = self.score_fn([work.sequences[i] for work, i in batch])
                if len(rewards) != len(batch):
                    raise RuntimeError(f"score_fn returned {len(rewards)} rewards for {len(batch)} sequences")
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
                log.exception("scoring a batch of %d sequences failed", len(batch))
                for work in {id(w): w for w, _ in batch}.values():
                    if not work.future.done():
                        work.future.set_exception(exc)
                continue
            self.batches += 1
            self.sequences += len(batch)
            for (work, i), reward in zip(batch, rewards):
                work.rewards[i] = reward
                work.done += 1
                if work.done == len(work.sequences) and not work.future.done():
                    work.future.set_result(work.rewards)
