"""Atomic file output: written under a sibling temporary name, renamed into place only on success.

A reader never sees half a file: either the old one (or none) or the complete new one. The temporary
file lives beside the target (same filesystem, so ``os.replace`` is atomic) and is removed when the
write fails. Every writer of a file that something else reads back (manifests, checkpoints' metadata,
calibrations, progress and done markers, reports) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "check_writable", "temp_path", "write_json_atomic", "write_text_atomic"]


def temp_path(path: str | os.PathLike) -> str:
    """The sibling temporary name of ``path``: ``.<name>.tmp-<pid>`` in the same directory."""
    head, tail = os.path.split(os.path.abspath(path))
    return os.path.join(head, f".{tail}.tmp-{os.getpid()}")


def check_writable(paths: list[str], overwrite: bool) -> None:
    """Refuse to clobber existing outputs unless ``overwrite``."""
    existing = [p for p in paths if p and os.path.exists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"output exists: {', '.join(existing)} (pass --overwrite to replace)")


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, fsync: bool = False, encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` when the block ends
    without an exception, else delete it. ``fsync`` flushes the data to disk before the rename (for
    files a crash must not leave empty, such as a checkpoint's completion marker)."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} has no 'w'")
    tmp = temp_path(path)
    f = open(tmp, mode, encoding=None if "b" in mode else encoding)
    try:
        with f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", fsync=fsync) as f:
        f.write(text)


def write_json_atomic(
    path: str | os.PathLike,
    obj: Any,
    *,
    indent: int | None = 2,
    ensure_ascii: bool = True,
    newline: bool = True,
    default: Any = None,
) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``newline``: end the file with one)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii, default=default)
    write_text_atomic(Path(path), text + ("\n" if newline else ""))
