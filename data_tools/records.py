"""JSONL input: streaming reads of plain / gzip / zstd files, line limits, schema checks, bad-row counts.

Every problem with a row is a :class:`RecordError` carrying a *reason* (a short counter name such as
``malformed_json``) and the row's ``file:line``. Callers either count it in :class:`BadRows` and move on,
or, under ``--strict``, let it stop the run. A damaged file (a truncated ``.gz``/``.zst``) is an
:class:`InputError` and always stops the run: how much data is missing cannot be known.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from megatron_polar.data.format import flatten_messages
from megatron_polar.utils.errors import InputError
from megatron_polar.utils.jsonl import DEFAULT_MAX_LINE_BYTES, InputFile, open_lines
from megatron_polar.utils.logging import get_logger

logger = get_logger(__name__)

LINE_REASONS = ("line_too_long", "invalid_utf8", "malformed_json", "not_an_object")  # from parse_line


class RecordError(ValueError):
    """A bad row: ``reason`` is a counter name, ``location`` is ``file:line``."""

    def __init__(self, reason: str, message: str, location: str = "?") -> None:
        super().__init__(f"{location}: {reason}: {message}")
        self.reason, self.message, self.location = reason, message, location

    def __reduce__(self):
        # Picklable across worker processes despite the three-argument constructor.
        return (RecordError, (self.reason, self.message, self.location))

    def at(self, location: str) -> RecordError:
        """The same error, placed at ``location``."""
        return RecordError(self.reason, self.message, location)


@dataclass
class BadRows:
    """Counts of skipped rows by reason, with up to ``max_examples`` ``file:line: message`` examples each."""

    max_examples: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, error: RecordError, log: bool = False) -> None:
        """Count one bad row; with ``log``, also log it while its reason is under the example cap."""
        if log and self.counts.get(error.reason, 0) < self.max_examples:
            logger.warning("skipped row %s: %s (%s)", error.location, error.message, error.reason)
        self.counts[error.reason] = self.counts.get(error.reason, 0) + 1
        ex = self.examples.setdefault(error.reason, [])
        if len(ex) < self.max_examples:
            ex.append(f"{error.location}: {error.message}")

    def merge(self, other: BadRows) -> None:
        """Add another tally (examples stay capped, earliest first)."""
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            ex = self.examples.setdefault(reason, [])
            ex.extend(other.examples.get(reason, [])[: max(0, self.max_examples - len(ex))])

    @property
    def total(self) -> int:
        """All bad rows."""
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        """``{reason: {"count": n, "examples": [...]}}``, sorted by reason."""
        return {
            r: {"count": self.counts[r], "examples": self.examples.get(r, [])} for r in sorted(self.counts)
        }


def iter_raw_lines(path: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, info: InputFile | None = None):
    """Yield ``(line_number, bytes | None)`` for each non-blank line of a ``.jsonl``, ``.jsonl.gz`` or
    ``.jsonl.zst`` (``None``: longer than ``max_line_bytes``); see :func:`megatron_polar.utils.jsonl.open_lines`.

    Raises:
        InputError: the file is missing or its compression is truncated/corrupt (names ``file:line``).
    """
    try:
        lines = open_lines(path, max_line_bytes, info)
    except OSError as e:
        raise InputError(f"{path}: cannot open: {e}") from e
    yield from lines


def parse_line(raw: bytes | None, location: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> dict:
    """Decode one JSONL line into a dict, or raise :class:`RecordError` (reasons ``line_too_long``,
    ``invalid_utf8``, ``malformed_json``, ``not_an_object``)."""
    if raw is None:
        raise RecordError("line_too_long", f"line longer than --max-line-bytes={max_line_bytes}", location)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError("invalid_utf8", f"not UTF-8 at byte {e.start}", location) from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError("malformed_json", f"{e.msg} at column {e.colno}", location) from None
    if not isinstance(row, dict):
        raise RecordError("not_an_object", f"expected a JSON object, got {type(row).__name__}", location)
    return row


def iter_rows(
    paths: list[str],
    bad: BadRows,
    *,
    strict: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    infos: list[InputFile] | None = None,
) -> Iterator[tuple[str, dict]]:
    """Yield ``(file:line, row)`` for every parseable row of ``paths`` in order.

    Bad lines are counted in ``bad`` (or raised under ``strict``). ``infos`` receives one
    :class:`InputFile` per path.
    """
    for path in paths:
        info = InputFile(path=os.path.abspath(path))
        if infos is not None:
            infos.append(info)
        for line_no, raw in iter_raw_lines(path, max_line_bytes, info):
            location = f"{path}:{line_no}"
            try:
                yield location, parse_line(raw, location, max_line_bytes)
            except RecordError as e:
                if strict:
                    raise
                bad.add(e, log=True)


# ---- schema checks ---------------------------------------------------------------------------------


def require_text(row: dict, key: str, *, allow_empty: bool = False) -> str:
    """``row[key]`` as flattened text (a string or a list of messages); raises :class:`RecordError`."""
    if key not in row:
        raise RecordError("missing_field", f"no {key!r} field")
    value = row[key]
    try:
        text = flatten_messages(value)
    except ValueError as e:
        raise RecordError("wrong_type", f"{key!r}: {e}") from None
    if not allow_empty and not text.strip():
        raise RecordError("empty_field", f"{key!r} is empty")
    return text


def require_str(row: dict, key: str) -> str:
    """A non-empty string field."""
    if key not in row:
        raise RecordError("missing_field", f"no {key!r} field")
    value = row[key]
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"{key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError("empty_field", f"{key!r} is empty")
    return value


def optional_str(row: dict, key: str) -> str | None:
    """A string field that may be absent or null."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordError("wrong_type", f"{key!r} must be a string or null, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Triple:
    """One training triple, flattened to text (roles dropped), as ``build`` tokenises it."""

    prompt: str
    reference: str
    chosen: str
    rejected: str
    wrapper: str | None = None


def validate_triple(row: dict) -> Triple:
    """Check a ``{"prompt","reference","chosen","rejected"[, "wrapper"]}`` row and flatten it.

    Responses may be empty or blank: the released training code takes them (and writes no ``"\n"``
    before an empty one), so a rollout that produced nothing still trains as released.
    """
    return Triple(
        prompt=require_text(row, "prompt"),
        reference=require_text(row, "reference", allow_empty=True),
        chosen=require_text(row, "chosen", allow_empty=True),
        rejected=require_text(row, "rejected", allow_empty=True),
        wrapper=optional_str(row, "wrapper"),
    )
