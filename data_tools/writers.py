"""Atomic JSONL output for the pipeline (the temporary-name rule is megatron_polar/utils/io.py's)."""

from __future__ import annotations

import gzip
import json
import os

from megatron_polar.utils.io import check_writable, temp_path


class AtomicJsonlWriter:
    """Write JSON rows to ``<path>`` (``.gz`` compresses); nothing appears at ``path`` unless the
    ``with`` block finishes. ``path=None`` gives a writer that rejects writes."""

    def __init__(self, path: str | None, overwrite: bool = False) -> None:
        self.path = path
        self.rows = 0
        if path:
            check_writable([path], overwrite)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._tmp = temp_path(path)

    def __enter__(self) -> AtomicJsonlWriter:
        if self.path:
            opener = gzip.open if self.path.endswith(".gz") else open
            self._f = opener(self._tmp, "wt", encoding="utf-8")
        return self

    def write(self, row: dict) -> None:
        """Append one row."""
        if not self.path:
            raise RuntimeError("no output path configured for these rows")
        self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.path:
            return
        self._f.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        elif os.path.exists(self._tmp):
            os.remove(self._tmp)
