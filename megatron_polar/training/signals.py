"""SIGTERM / SIGUSR1 → save and exit at the end of the current step.

SLURM sends one of these before a time limit or a preemption. The handler only records the request;
the trainer polls :meth:`ExitSignal.should_exit` after each step, agreeing across ranks so that every
rank saves the same step.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


class ExitSignal:
    """Installed for the duration of training; restores the previous handlers on :meth:`restore`."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {}
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.received is None:
            log.warning("received %s: will save and exit after this step", signal.Signals(signum).name)
        self.received = signum

    def should_exit(self) -> bool:
        """True on every rank if any rank received a signal (one all-reduce per step)."""
        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32)
        if dist.is_initialized():
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
