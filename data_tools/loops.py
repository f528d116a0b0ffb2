"""Repetition-loop truncation for sampled trajectories (POLAR appendix A.1.1).

A degenerate sample often ends in a loop: the same few characters, words or lines repeated until the
token cap. The paper truncates such loops *keeping some repetition*, so the reward model still learns
that looping is bad without spending thousands of tokens on it. :func:`truncate_loops` finds the
earliest loop and cuts the text after ``keep`` repetitions of its unit. A loop is a unit repeated at
least ``min_repeats`` times back to back, spanning at least ``min_span_chars`` characters; units are
either a character period of 1..``max_period`` (which covers repeated words and short lines) or a block
of 1..``max_block_lines`` lines (long repeated paragraphs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LoopConfig:
    """When a repetition counts as a loop, and how much of it to keep."""

    keep: int = 2  # repetitions of the unit kept after the loop starts
    min_repeats: int = 6  # back-to-back repetitions that make a loop
    min_span_chars: int = 256  # a loop must also span this many characters (spares "----" rules etc.)
    max_period: int = 64  # longest character period checked
    max_block_lines: int = 8  # longest block of lines checked


def _first_run(eq: np.ndarray, min_len: int) -> int:
    """Start of the first run of ``True`` of length >= ``min_len`` in ``eq``, or -1."""
    if min_len <= 0 or eq.size < min_len:
        return -1
    edges = np.diff(np.concatenate(([0], eq.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    hit = np.flatnonzero(ends - starts >= min_len)
    return int(starts[hit[0]]) if hit.size else -1


def _char_loop(text: str, cfg: LoopConfig) -> tuple[int, int] | None:
    """Earliest (start, cut) of a character-period loop."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    best = None
    for period in range(1, min(cfg.max_period, codes.size // cfg.min_repeats) + 1):
        need = max((cfg.min_repeats - 1) * period, cfg.min_span_chars - period)
        start = _first_run(codes[:-period] == codes[period:], need)
        if start >= 0 and (best is None or start < best[0]):
            best = (start, start + cfg.keep * period)
    return best


def _line_loop(text: str, cfg: LoopConfig) -> tuple[int, int] | None:
    """Earliest (start, cut) of a loop of whole blocks of lines, in characters."""
    lines = text.splitlines(keepends=True)
    if len(lines) < cfg.min_repeats:
        return None
    ids: dict[str, int] = {}
    codes = np.fromiter((ids.setdefault(line, len(ids)) for line in lines), dtype=np.int64, count=len(lines))
    offsets = np.concatenate(([0], np.cumsum([len(line) for line in lines])))
    best = None
    for block in range(1, min(cfg.max_block_lines, len(lines) // cfg.min_repeats) + 1):
        eq = codes[:-block] == codes[block:]
        need = (cfg.min_repeats - 1) * block
        edges = np.diff(np.concatenate(([0], eq.astype(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for s, e in zip(starts.tolist(), ends.tolist()):
            if e - s < need or offsets[e + block] - offsets[s] < cfg.min_span_chars:
                continue
            if best is None or offsets[s] < best[0]:
                best = (int(offsets[s]), int(offsets[s + cfg.keep * block]))
            break
    return best


def truncate_loops(text: str, cfg: LoopConfig = LoopConfig()) -> tuple[str, bool]:
    """Cut ``text`` after ``cfg.keep`` repetitions of its earliest loop; returns (text, was_truncated)."""
    if len(text) < cfg.min_span_chars:
        return text, False
    found = [f for f in (_char_loop(text, cfg), _line_loop(text, cfg)) if f is not None]
    if not found:
        return text, False
    _, cut = min(found)
    return text[:cut], cut < len(text)
