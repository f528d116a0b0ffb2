"""SIGTERM / SIGUSR1 → save and exit at the end of the current step.

SLURM sends one of these before a time limit or a preemption. The handler only records the request;
the trainer polls :meth:`ExitSignal.should_exit` after each step, agreeing across ranks so that every
rank saves the same step.
"""

from __future__ import annotations

import signal

from megatron_polar.parallel import comm
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
        return comm.any_rank(self.received is not None)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
