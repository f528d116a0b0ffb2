"""JSONL reading with file:line errors for the scoring tools (atomic writes: utils/io.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from megatron_polar.utils.errors import BadRowError as BadRowError
from megatron_polar.utils.io import write_json_atomic as write_json_atomic


def iter_jsonl(path: str | os.PathLike, start_line: int = 0) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, object, error)`` for each non-blank line after ``start_line``.

    ``error`` is None for a parsed line, else the parse error (``object`` is then None); line numbers
    start at 1.
    """
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if lineno <= start_line or not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield lineno, None, f"invalid JSON ({exc})"


def count_lines(path: str | os.PathLike) -> int:
    """Number of lines of a file (for progress totals)."""
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
