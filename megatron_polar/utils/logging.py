"""Rank-aware logging: library code logs through :func:`get_logger`; only rank 0 speaks by default."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s [%(levelname)s] [rank %(rank)s] %(name)s: %(message)s"


def _rank() -> int:
    # Only a process that has imported torch.distributed can have a process group; asking sys.modules
    # keeps a log record from importing torch (seconds) in the processes that never do (data_tools).
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class _RankFilter(logging.Filter):
    """Stamp each record with the global rank; drop non-zero ranks unless ``all_ranks`` is set."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = _rank()
        return (
            record.rank == 0
            or getattr(record, "all_ranks", False)
            or os.environ.get("POLAR_LOG_ALL_RANKS") == "1"
        )


def setup_logging(level: str = "INFO") -> None:
    """Configure the ``megatron_polar`` and ``data_tools`` loggers once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankFilter())
    for name in ("megatron_polar", "data_tools"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A logger under the project's hierarchy (pass ``__name__``)."""
    return logging.getLogger(name)
