"""The one JSONL reader: plain, gzip or zstd files, line by line, with ``file:line`` in every error.

``data_tools`` reads its inputs through :func:`open_lines` (bounded line length, input hashes for the
manifest, bad rows counted by reason); the scoring tools read rows through :func:`iter_jsonl`, which
adds resumption at a line and turns each line into ``(line, object, error)``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from megatron_polar.utils.errors import InputError

DEFAULT_MAX_LINE_BYTES = 16 << 20  # longer lines are skipped as ``line_too_long`` without being held
_READ_BLOCK = 1 << 20


class _HashingReader(io.RawIOBase):
    """Pass-through reader that hashes the raw (compressed) bytes it hands on."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._raw.readinto(b)
        if n:
            self.sha256.update(memoryview(b)[:n])
            self.nbytes += n
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


class _ZstdReader(io.RawIOBase):
    """Multi-frame zstd decompression that notices a truncated last frame (``stream_reader`` does not)."""

    def __init__(self, raw: io.RawIOBase) -> None:
        import zstandard

        self._raw = raw
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = None
        self._buf = b""
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos >= len(self._buf):
            chunk = self._raw.read(_READ_BLOCK)
            if not chunk:
                if self._dobj is not None and not self._dobj.eof:
                    raise EOFError("zstd stream ends inside a frame (truncated file)")
                return 0
            out = []
            while chunk:
                if self._dobj is None or self._dobj.eof:
                    self._dobj = self._dctx.decompressobj()
                out.append(self._dobj.decompress(chunk))
                chunk = self._dobj.unused_data if self._dobj.eof else b""
            self._buf, self._pos = b"".join(out), 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


@dataclass
class InputFile:
    """What a manifest records about one input: filled in while the file is read."""

    path: str
    size: int = 0
    mtime: float = 0.0
    sha256: str | None = None  # of the file's bytes as stored (compressed), set after a full read
    lines: int = 0

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "path": self.path,
            "size": self.size,
            "mtime": self.mtime,
            "sha256": self.sha256,
            "lines": self.lines,
        }


def open_lines(
    path: str | os.PathLike,
    max_line_bytes: int | None = DEFAULT_MAX_LINE_BYTES,
    info: InputFile | None = None,
) -> Iterator[tuple[int, bytes | None]]:
    """Open ``path`` now (an ``OSError`` comes from this call) and return an iterator of
    ``(line_number, bytes | None)`` for each line of a ``.jsonl``, ``.jsonl.gz`` or ``.jsonl.zst``.

    A line longer than ``max_line_bytes`` is yielded as ``None`` after being read past in bounded blocks,
    so memory stays within about ``max_line_bytes`` (``None``: no limit). Blank lines are skipped; line
    numbers count them and start at 1. Fills ``info`` (size, mtime, sha256 of the stored bytes, line
    count) when given. A truncated or corrupt compressed stream raises :class:`InputError` naming
    ``file:line``.
    """
    path = os.fspath(path)
    st = os.stat(path)
    raw = open(path, "rb", buffering=0)
    if info is not None:
        info.size, info.mtime = st.st_size, st.st_mtime
    hashing = _HashingReader(raw)
    if path.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=io.BufferedReader(hashing, _READ_BLOCK), mode="rb")
    elif path.endswith(".zst") or path.endswith(".zstd"):
        stream = io.BufferedReader(_ZstdReader(io.BufferedReader(hashing, _READ_BLOCK)), _READ_BLOCK)
    else:
        stream = io.BufferedReader(hashing, _READ_BLOCK)
    return _lines(path, stream, max_line_bytes, hashing, info)


def _lines(
    path: str, stream: IO[bytes], max_line_bytes: int | None, hashing: _HashingReader, info: InputFile | None
) -> Iterator[tuple[int, bytes | None]]:
    line_no = 0
    try:
        with stream:
            while True:
                line = stream.readline(-1 if max_line_bytes is None else max_line_bytes + 1)
                if not line:
                    break
                line_no += 1
                if max_line_bytes is not None and len(line) > max_line_bytes and not line.endswith(b"\n"):
                    while line and not line.endswith(b"\n"):
                        line = stream.readline(_READ_BLOCK)
                    yield line_no, None
                    continue
                if line.strip():
                    yield line_no, line
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise InputError(
            f"{path}:{line_no + 1}: input ends early or is corrupt ({e}); nothing was written"
        ) from e
    if info is not None:
        info.sha256 = hashing.sha256.hexdigest()
        info.lines = line_no


def iter_jsonl(
    path: str | os.PathLike, start_line: int = 0, max_line_bytes: int | None = None
) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, object, error)`` for each non-blank line after ``start_line``.

    ``error`` is None for a parsed line, else what is wrong with it (``object`` is then None); line
    numbers start at 1. A missing file raises ``OSError`` at the first step.
    """
    for lineno, raw in open_lines(path, max_line_bytes):
        if lineno <= start_line:
            continue
        if raw is None:
            yield lineno, None, f"line longer than {max_line_bytes} bytes"
            continue
        try:
            yield lineno, json.loads(raw.decode("utf-8")), None
        except UnicodeDecodeError as exc:
            yield lineno, None, f"not UTF-8 at byte {exc.start}"
        except json.JSONDecodeError as exc:
            yield lineno, None, f"invalid JSON ({exc})"


def count_lines(path: str | os.PathLike) -> int:
    """Number of lines of a file (for progress totals)."""
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
