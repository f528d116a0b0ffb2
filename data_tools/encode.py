"""The per-chunk work of ``build``: parse, validate and tokenise rows into one shard dataset.

Runs in worker processes (or in-process for ``--workers 1``). A chunk is a fixed run of input lines
cut by the reader independently of the worker count, and each chunk becomes its own shard
``<shard_dir>/chunk-<id>.{bin,idx}``; the parent merges shards in chunk order, which is why
``--workers 1`` and ``--workers N`` write byte-identical datasets.
"""

from __future__ import annotations

import os
import resource
from array import array
from dataclasses import dataclass, field

import numpy as np

from data_tools.index_builder import IndexedDatasetWriter
from data_tools.records import BadRows, RecordError, parse_line, validate_triple
from megatron_polar.data.format import encode_pair
from megatron_polar.data.pair_dataset import shared_prefix_length
from megatron_polar.data.tokenizer import PolarTokenizer

TRUNCATION_KEYS = ("prompt", "reference", "chosen", "rejected")


@dataclass(frozen=True)
class EncodeSettings:
    """What every worker needs besides the tokenizer."""

    paths: tuple[str, ...]  # input paths, indexed by a chunk line's file number
    shard_dir: str
    dtype: str  # numpy dtype name of the token files
    max_length: int
    max_response_length: int
    strict: bool
    max_line_bytes: int
    max_examples: int


@dataclass
class ChunkResult:
    """What a worker sends back: the shard prefix, counters and each pair's shared-prefix length
    (never the tokens themselves)."""

    chunk_id: int
    shard_prefix: str
    rows: int = 0
    pairs: int = 0
    tokens: int = 0  # tokens written (both sequences, specials included)
    encoded_tokens: int = 0  # ids of the four measured segments (BOS included), before truncation
    truncated: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRUNCATION_KEYS, 0))
    bad: BadRows = field(default_factory=BadRows)
    error: RecordError | None = None  # strict mode: the first bad row
    pid: int = 0
    peak_rss_kb: int = 0
    prefix_lengths: array = field(default_factory=lambda: array("i"))  # one per pair written


_STATE: dict = {}


def init_worker(tokenizer: PolarTokenizer, settings: EncodeSettings) -> None:
    """Pool initializer: keep the tokenizer and settings for :func:`encode_chunk`."""
    _STATE["tokenizer"], _STATE["settings"] = tokenizer, settings


def encode_chunk(task: tuple[int, list[tuple[int, int, bytes | None]]]) -> ChunkResult:
    """Tokenise one chunk of ``(file_no, line_no, raw_line)`` into the shard ``chunk-<id>``."""
    tok: PolarTokenizer = _STATE["tokenizer"]
    s: EncodeSettings = _STATE["settings"]
    chunk_id, lines = task
    prefix = os.path.join(s.shard_dir, f"chunk-{chunk_id:08d}")
    result = ChunkResult(chunk_id, prefix, bad=BadRows(max_examples=s.max_examples), pid=os.getpid())
    builder = IndexedDatasetWriter(prefix + ".bin", dtype=s.dtype)
    for file_no, line_no, raw in lines:
        result.rows += 1
        location = f"{s.paths[file_no]}:{line_no}"
        try:
            triple = validate_triple(parse_line(raw, location, s.max_line_bytes))
        except RecordError as e:
            e = e.at(location)
            if s.strict:
                result.error = e
                break
            result.bad.add(e)
            continue
        chosen, rejected = encode_pair(
            tok,
            triple.prompt,
            triple.reference,
            triple.chosen,
            triple.rejected,
            max_length=s.max_length,
            max_response_length=s.max_response_length,
            wrapper=triple.wrapper,
        )
        seq_c, seq_r = chosen.ids, rejected.ids
        builder.add_document(np.asarray(seq_c + seq_r), [len(seq_c), len(seq_r)])
        result.prefix_lengths.append(shared_prefix_length(seq_c, seq_r))
        result.pairs += 1
        result.tokens += len(seq_c) + len(seq_r)
        result.encoded_tokens += sum(chosen.measured) + rejected.measured[2]
        t = result.truncated
        t["prompt"] += bool(chosen.info.prompt_dropped)
        t["reference"] += bool(chosen.info.reference_dropped)
        t["chosen"] += bool(chosen.info.candidate_dropped)
        t["rejected"] += bool(rejected.info.candidate_dropped)
    builder.finalize(prefix + ".idx")
    result.peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result
