"""Build the next step's batches in a background thread while the current step computes.

Reading pairs through mmap and collating 32k-token rows with block masks takes host time that, done
inline, adds to every step. One worker thread builds step ``s + 1`` while step ``s`` runs; the batches
are the same as inline ones (they are a pure function of the step), only their timing changes. The
trainer logs how long it waited for a step's batches (``batch_wait_s``: zero when the overlap hides
the build) and how long building took (``batch_build_s``).

Plans are opened in the calling (main) thread with :meth:`PairBatches.prepare` before a step is handed
to the worker, so any collective barrier a shared plan store needs never runs off the main thread.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from megatron_polar.data.batch import RewardBatch


class BatchPrefetcher:
    """``get(step)`` returns that step's batches and starts building ``step + 1``.

    Args:
        data: a :class:`~megatron_polar.data.sampler.PairBatches`.
        enabled: ``False`` builds every step inline (same batches, no thread).
        end: first step not to prefetch (the run's last step + 1); ``None``: no end.
    """

    def __init__(self, data, enabled: bool = True, end: int | None = None):
        self.data, self.end = data, end
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-prefetch") if enabled else None
        )
        self._ahead: tuple[int, Future] | None = None
        self.last_wait_s = self.last_build_s = 0.0

    def _build(self, step: int) -> tuple[list[RewardBatch], float]:
        t0 = time.perf_counter()
        batches = self.data.step_batches(step)
        return batches, time.perf_counter() - t0

    def get(self, step: int) -> list[RewardBatch]:
        """Batches of ``step``; sets :attr:`last_wait_s` and :attr:`last_build_s`."""
        t0 = time.perf_counter()
        if self._ahead is not None and self._ahead[0] == step:
            batches, self.last_build_s = self._ahead[1].result()
        else:
            if self._ahead is not None:  # a step other than the prefetched one: drop it
                self._ahead[1].cancel()
            self.data.prepare(step)
            batches, self.last_build_s = self._build(step)
        self._ahead = None
        self.last_wait_s = time.perf_counter() - t0
        if self._pool is not None and (self.end is None or step + 1 < self.end):
            self.data.prepare(step + 1)  # main thread: may meet the other ranks at a plan barrier
            self._ahead = (step + 1, self._pool.submit(self._build, step + 1))
        return batches

    def close(self) -> None:
        """Stop the worker (a build in progress finishes; nothing new starts). Safe to call twice."""
        if self._pool is not None:
            if self._ahead is not None:
                self._ahead[1].cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead = None

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
