"""Split ``build`` and ``pair`` into shards that separate processes (or SLURM array tasks) run alone.

``build``: the inputs, seen as one stream of bytes in the order given, are cut into ``count`` equal byte
ranges; a line belongs to the shard whose range holds its first byte. Compressed files cannot be entered
in the middle, so a ``.gz``/``.zst`` file goes whole to the shard holding its first byte (split a corpus
into many compressed files to balance shards). Line numbers stay global (``file:line`` as in a one-process
build): a shard that starts inside a file counts the newlines before its range. Shard ``i`` of ``n``
writes a complete dataset ``<prefix>.shard-<i>-of-<n>``; merging the shards in index order gives the
one-process build's ``.bin``/``.idx`` byte for byte, because a build writes rows in input order and the
shard ranges follow that order.

``pair``: all rollouts of a prompt must meet, so every shard reads every input and keeps the prompts whose
hash partition falls in its contiguous block of partitions. A one-process run writes partitions in
order, so the shard outputs concatenated in index order are the one-process output.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass

from data_tools.records import DEFAULT_MAX_LINE_BYTES, InputError, InputFile, iter_raw_lines

_BLOCK = 1 << 22
_COMPRESSED = (".gz", ".zst", ".zstd")


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (``count == 1``: the whole job)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard-index {self.index} must be in [0, --num-shards {self.count})")

    @property
    def sharded(self) -> bool:
        """More than one shard."""
        return self.count > 1


def shard_path(path: str, index: int, count: int) -> str:
    """``pairs.jsonl.gz`` -> ``pairs.shard-00001-of-00004.jsonl.gz`` (suffixes kept: they pick the codec)."""
    head, tail = os.path.split(path)
    stem, dot, ext = tail.partition(".")
    return os.path.join(head, f"{stem}.shard-{index:05d}-of-{count:05d}{dot}{ext}")


def shard_prefix(prefix: str, index: int, count: int) -> str:
    """Output prefix of a ``build`` shard."""
    return f"{prefix}.shard-{index:05d}-of-{count:05d}"


@dataclass(frozen=True)
class FileRange:
    """Lines of input ``file_no`` that start in bytes ``[start, end)``; ``whole``: the entire file."""

    file_no: int
    start: int
    end: int
    whole: bool


def plan_ranges(paths: list[str], spec: ShardSpec) -> list[FileRange]:
    """The byte ranges of shard ``spec`` over ``paths`` (a function of file sizes only)."""
    sizes = []
    for p in paths:
        try:
            sizes.append(os.path.getsize(p))
        except OSError as e:
            raise InputError(f"{p}: cannot open: {e}") from e
    total = sum(sizes)
    lo, hi = total * spec.index // spec.count, total * (spec.index + 1) // spec.count
    ranges, offset = [], 0
    for file_no, (path, size) in enumerate(zip(paths, sizes)):
        f_lo, f_hi = offset, offset + size
        offset = f_hi
        if path.endswith(_COMPRESSED) or size == 0:
            # Unsplittable: owned by the shard whose range holds its first byte (the last one for
            # a file at the very end, so empty trailing files are still listed once).
            owner = lo <= f_lo < hi or (spec.index == spec.count - 1 and f_lo >= total)
            if owner:
                ranges.append(FileRange(file_no, 0, size, True))
            continue
        a, b = max(lo, f_lo), min(hi, f_hi)
        if a < b:
            ranges.append(FileRange(file_no, a - f_lo, b - f_lo, a == f_lo and b == f_hi))
    return ranges


def _first_line_start(f: io.BufferedReader, start: int) -> int:
    """Offset of the first line starting at or after ``start`` (lines belong to their first byte)."""
    if start == 0:
        return 0
    f.seek(start - 1)
    pos = start - 1
    while True:
        block = f.read(_BLOCK)
        if not block:
            return pos
        nl = block.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(block)


def _count_newlines(f: io.BufferedReader, end: int) -> int:
    f.seek(0)
    count, left = 0, end
    while left > 0:
        block = f.read(min(_BLOCK, left))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


def iter_range_lines(
    path: str, rng: FileRange, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, info: InputFile | None = None
) -> Iterator[tuple[int, bytes | None]]:
    """``(global line number, bytes | None)`` of the lines starting in ``rng``, as ``iter_raw_lines``
    yields them (blank lines skipped, over-long lines as ``None``). Fills ``info``'s size and mtime, and
    its line count when the range reaches the end of the file; the hash only for whole files."""
    if rng.whole:
        yield from iter_raw_lines(path, max_line_bytes, info)
        return
    try:
        st = os.stat(path)
        f = open(path, "rb", buffering=_BLOCK)
    except OSError as e:
        raise InputError(f"{path}: cannot open: {e}") from e
    if info is not None:
        info.size, info.mtime = st.st_size, st.st_mtime
    with f:
        pos = _first_line_start(f, rng.start)
        line_no = _count_newlines(f, pos)
        f.seek(pos)
        while pos < rng.end:
            line = f.readline(max_line_bytes + 1)
            if not line:
                break
            line_no += 1
            pos += len(line)
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):
                    line = f.readline(_BLOCK)
                    pos += len(line)
                yield line_no, None
                continue
            if line.strip():
                yield line_no, line
    if info is not None and rng.end >= st.st_size:
        info.lines = line_no


def partition_block(partitions: int, spec: ShardSpec) -> range:
    """The contiguous block of ``pair`` hash partitions that shard ``spec`` owns."""
    if spec.count > partitions:
        raise ValueError(f"--num-shards {spec.count} exceeds --partitions {partitions}; raise --partitions")
    return range(partitions * spec.index // spec.count, partitions * (spec.index + 1) // spec.count)
