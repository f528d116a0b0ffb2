"""Score a JSONL file of requests or training triples; the library side of ``python -m megatron_polar.score``.

Input rows are ``{"prompt", "reference" | "references", "candidates": [...]}`` or training triples
``{"prompt", "reference", "chosen", "rejected"}`` (scored as ``[chosen, rejected]``). Each output row is
the input row with ``"rewards"`` added (and ``"truncated"`` when truncation cut any candidate).

The output is written to ``<output>.partial`` and renamed when complete, so a file at the output path is
always whole. After every chunk a progress record ``<output>.partial.progress`` notes how many input lines
and output bytes are committed; ``resume=True`` continues an interrupted run from there.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from megatron_polar.scoring.jsonl import BadRowError, count_lines, iter_jsonl
from megatron_polar.scoring.requests import RequestError, ScoreRequest, parse_row
from megatron_polar.scoring.scorer import PolarScorer
from megatron_polar.utils.io import write_json_atomic
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class ScoreFileStats:
    """What one run of :func:`score_file` did."""

    rows: int = 0  # rows scored and written (this run and any resumed part)
    skipped: int = 0  # bad rows skipped (with skip_bad)
    sequences: int = 0  # sequences scored in this run
    truncated: int = 0  # candidates with a truncated sequence
    resumed_from_line: int = 0  # input lines already done by an interrupted run


def _paths(output: Path) -> tuple[Path, Path]:
    partial = output.with_name(output.name + ".partial")
    return partial, partial.with_name(partial.name + ".progress")


def _input_signature(path: Path) -> dict:
    st = path.stat()
    return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _load_progress(progress: Path, signature: dict) -> dict | None:
    try:
        state = json.loads(progress.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if state.get("signature") == signature else None


def score_file(
    scorer: PolarScorer,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    chunk_rows: int = 256,
    skip_bad: bool = False,
    resume: bool = False,
    progress: bool = True,
    normalize: bool | None = None,
) -> ScoreFileStats:
    """Score every row of ``input_path`` into ``output_path`` (see the module docstring).

    Raises:
        BadRowError: naming ``file:line`` for the first bad row, unless ``skip_bad`` (then counted).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    partial, progress_file = _paths(output_path)
    signature = _input_signature(input_path)
    state = _load_progress(progress_file, signature) if resume else None
    stats = ScoreFileStats()
    if state is not None:
        with open(partial, "r+b") as f:  # drop anything written after the last committed chunk
            f.truncate(state["bytes"])
        stats.rows, stats.skipped = state["rows"], state["skipped"]
        stats.resumed_from_line = state["lines"]
        log.info("resuming %s after input line %d (%d rows done)", output_path, state["lines"], stats.rows)
    else:
        state = {"signature": signature, "lines": 0, "bytes": 0, "rows": 0, "skipped": 0}
        partial.write_bytes(b"")

    bar = _progress_bar(progress, count_lines(input_path), state["lines"])
    chunk: list[tuple[int, dict, ScoreRequest]] = []
    last_line = state["lines"]
    with open(partial, "ab") as out:

        def flush() -> None:
            if chunk:
                _score_chunk(scorer, chunk, out, stats, normalize)
            out.flush()
            os.fsync(out.fileno())
            state.update(lines=last_line, bytes=out.tell(), rows=stats.rows, skipped=stats.skipped)
            write_json_atomic(progress_file, state, indent=None, newline=False)
            if bar is not None:
                bar.update(last_line - bar.n)
            chunk.clear()

        for lineno, obj, error in iter_jsonl(input_path, start_line=state["lines"]):
            try:
                if error is not None:
                    raise RequestError(error)
                chunk.append((lineno, obj, parse_row(obj)))
            except RequestError as exc:
                if not skip_bad:
                    raise BadRowError(f"{input_path}:{lineno}: {exc}") from None
                stats.skipped += 1
                log.warning("%s:%d: skipped: %s", input_path, lineno, exc)
            last_line = lineno
            if len(chunk) >= chunk_rows:
                flush()
        flush()
    if bar is not None:
        bar.close()
    os.replace(partial, output_path)
    progress_file.unlink(missing_ok=True)
    log.info("scored %d rows into %s (%d skipped)", stats.rows, output_path, stats.skipped)
    return stats


def _score_chunk(
    scorer: PolarScorer,
    chunk: list[tuple[int, dict, ScoreRequest]],
    out: Any,
    stats: ScoreFileStats,
    normalize,
) -> None:
    results = scorer.score_requests([req for _, _, req in chunk], normalize=normalize)
    lines = []
    for (_, row, req), scores in zip(chunk, results):
        row = dict(row)
        row["rewards"] = [s.reward for s in scores]
        if any(s.truncated for s in scores):
            row["truncated"] = [s.truncated for s in scores]
            stats.truncated += sum(s.truncated for s in scores)
        stats.sequences += len(req.candidates) * len(req.references)
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    out.write("".join(lines).encode("utf-8"))
    stats.rows += len(chunk)


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="line", desc="scoring", dynamic_ncols=True)


def stats_dict(stats: ScoreFileStats) -> dict:
    """Stats as a plain dict (for logs and JSON)."""
    return asdict(stats)
