"""The errors megatron_polar raises on bad input, on the lowest floor so that every layer can raise them.

Each class keeps the built-in base its callers catch (``ValueError`` for input that is wrong,
``RuntimeError`` for state on disk that is missing or does not fit) and adds :class:`PolarError`, so
that an entry point can tell any of them from a bug with one ``except``. The modules that raise them
re-export them under their old names (``megatron_polar.config.ConfigError``,
``megatron_polar.checkpoint.manager.CheckpointError``, ...); importing from here costs no Hydra, torch
or megatron-core import.

Errors that stay with their module, and why: ``BatcherClosed`` (``scoring/batcher.py``: a shutdown signal inside the batcher, not
bad input), ``RewardServerError`` (``integrations/verl.py``: the verl client imports nothing from this
package so it can run inside verl's workers), ``RecordError`` (``data_tools``: the
build tool's own input schema; ``InputError`` lives here because the shared JSONL reader raises it).
"""

from __future__ import annotations

__all__ = [
    "BadRowError",
    "CalibrationError",
    "ChatTemplateError",
    "CheckpointError",
    "ConfigError",
    "ConversionError",
    "DatasetError",
    "InputError",
    "PlanError",
    "PolarError",
    "RequestError",
]


class PolarError(Exception):
    """Base of the errors below: a message for the user, naming the file, line, field or key."""


class ConfigError(PolarError, ValueError):
    """A configuration that cannot run; the message names the key to change."""


class CalibrationError(PolarError, ValueError):
    """A calibration file that cannot be used; the message names the file and the field."""


class DatasetError(PolarError, ValueError):
    """A built dataset is missing, incomplete, corrupt or of another format version."""


class BadRowError(PolarError, ValueError):
    """A row that cannot be used; the message starts with ``file:line:``."""


class RequestError(PolarError, ValueError):
    """A request that cannot be scored; the message names the offending field."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ChatTemplateError(PolarError, ValueError):
    """A chat template that cannot be loaded or learned; the message names the file or field."""


class CheckpointError(PolarError, RuntimeError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


class ConversionError(PolarError, RuntimeError):
    """An input that cannot be converted; the message names the file or tensor and what is wrong."""


class InputError(PolarError, RuntimeError):
    """An input file cannot be read to its end (missing, truncated or corrupt compression)."""


class PlanError(PolarError, RuntimeError):
    """A stored epoch plan is missing, stale or corrupt where it must be usable."""
