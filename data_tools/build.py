"""``build``: triples JSONL -> megatron-core indexed pair dataset + manifest.

Pipeline: the parent streams input lines (plain/gz/zst, bounded line size) into fixed chunks of
``chunk_rows`` lines; workers tokenise each chunk into a shard (``data_tools.encode``); the parent
merges shards in chunk order with ``add_index`` (``data_tools.index_builder``: megatron-core's format
written without megatron-core, packed index buffers) while at most ``2 * workers`` chunks are in flight,
so memory does not grow with the input beyond the index itself and the shared-prefix lengths (20 bytes
per pair).

Outputs are written under temporary names and renamed at the end: ``.bin``, ``.idx``, the shared-prefix
sidecar ``.prefix.npy`` (``data_tools.prefix_lengths``), then the manifest, which marks a complete build. A failed or interrupted build leaves no manifest (and normally no
final ``.bin``/``.idx`` either); existing outputs are refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from data_tools.encode import TRUNCATION_KEYS, ChunkResult, EncodeSettings, encode_chunk, init_worker
from data_tools.index_builder import IndexedDatasetWriter
from data_tools.prefix_lengths import prefix_lengths_entry, write_prefix_file
from data_tools.records import DEFAULT_MAX_LINE_BYTES, BadRows, InputFile
from data_tools.sharding import FileRange, ShardSpec, iter_range_lines, plan_ranges, shard_prefix
from megatron_polar.data import pair_dataset
from megatron_polar.data.format import check_lengths
from megatron_polar.data.index_format import optimal_dtype
from megatron_polar.data.packing import pack_pairs, packing_efficiency, split_oversize
from megatron_polar.data.tokenizer import PolarTokenizer
from megatron_polar.utils.io import check_writable
from megatron_polar.utils.logging import get_logger

logger = get_logger(__name__)

PACKING_ROW_LENGTHS = (8192, 16384, 32768, 65536)
_PACKING_SAMPLE = 200_000  # pairs used for the projected packing efficiency


@dataclass(frozen=True)
class BuildConfig:
    """Options of ``build``."""

    max_length: int = 16384  # tokens per sequence, after the released truncation
    max_response_length: int = 4096  # cap on the reference and on each candidate
    workers: int = 1  # tokenising processes (1: in-process)
    chunk_rows: int = 2048  # input lines per chunk / shard (fixes the output order; not worker-dependent)
    chunk_bytes: int = 64 << 20  # ... or fewer, once a chunk's raw lines reach this many bytes
    strict: bool = False  # stop at the first bad row instead of skipping it
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_examples: int = 5  # file:line examples kept per skip reason
    overwrite: bool = False
    progress: bool | None = None  # tqdm bar on stderr; None: only when stderr is a terminal
    num_shards: int = 1  # split the input into this many independent builds (``merge`` joins them)
    shard_index: int = 0  # which of them this process builds


@dataclass
class BuildTotals:
    """Counters summed over chunks."""

    rows_read: int = 0
    pairs_written: int = 0
    tokens: int = 0
    encoded_tokens: int = 0
    truncated: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRUNCATION_KEYS, 0))
    bad: BadRows = field(default_factory=BadRows)
    worker_peak_rss_kb: dict[int, int] = field(default_factory=dict)
    prefix_lengths: array = field(default_factory=lambda: array("i"))  # per pair, in output order

    def add(self, r: ChunkResult) -> None:
        """Fold one chunk's counters in."""
        self.rows_read += r.rows
        self.pairs_written += r.pairs
        self.tokens += r.tokens
        self.encoded_tokens += r.encoded_tokens
        for k, v in r.truncated.items():
            self.truncated[k] += v
        self.bad.merge(r.bad)
        self.worker_peak_rss_kb[r.pid] = max(self.worker_peak_rss_kb.get(r.pid, 0), r.peak_rss_kb)
        self.prefix_lengths.extend(r.prefix_lengths)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 below 65500 ids, else int32 (megatron-core's ``DType.optimal_dtype``)."""
    return optimal_dtype(vocab_size)


def _chunks(
    paths: list[str], cfg: BuildConfig, ranges: list[FileRange], infos: list[InputFile]
) -> Iterator[tuple[int, list]]:
    """Chunks of ``(file_no, line_no, raw)`` over this shard's input ranges, in input order, cut by row
    count and bytes (never by worker count, so the output is the same for any ``workers``)."""
    chunk: list = []
    chunk_id = nbytes = 0
    for rng in ranges:
        file_no, path = rng.file_no, paths[rng.file_no]
        info = InputFile(path=os.path.abspath(path))
        infos.append(info)
        for line_no, raw in iter_range_lines(path, rng, cfg.max_line_bytes, info):
            chunk.append((file_no, line_no, raw))
            nbytes += len(raw) if raw is not None else 0
            if len(chunk) >= cfg.chunk_rows or nbytes >= cfg.chunk_bytes:
                yield chunk_id, chunk
                chunk, chunk_id, nbytes = [], chunk_id + 1, 0
    if chunk:
        yield chunk_id, chunk


def _ordered_results(tasks: Iterator, workers: int, initargs: tuple) -> Iterator[ChunkResult]:
    """Results in task order with at most ``2 * workers`` tasks in flight (``Pool.imap`` would read
    the whole input ahead)."""
    if workers <= 1:
        init_worker(*initargs)
        for task in tasks:
            yield encode_chunk(task)
        return
    # fork: workers inherit the imported modules; nothing here has started threads.
    with mp.get_context("fork").Pool(workers, initializer=init_worker, initargs=initargs) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(encode_chunk, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _progress(cfg: BuildConfig):
    from tqdm import tqdm

    disable = (not sys.stderr.isatty()) if cfg.progress is None else not cfg.progress
    return tqdm(unit="rows", unit_scale=True, file=sys.stderr, disable=disable, desc="build")


def build_dataset(
    paths: list[str], prefix: str, tokenizer: PolarTokenizer, cfg: BuildConfig = BuildConfig()
) -> dict:
    """Build ``<prefix>.{bin,idx,manifest.json}`` from triples JSONL files; returns the manifest.

    With ``cfg.num_shards > 1`` only shard ``cfg.shard_index`` of the input is built, as the complete
    dataset ``<prefix>.shard-<i>-of-<n>`` (see ``data_tools.sharding``; ``merge_build`` joins them).

    Raises:
        FileExistsError: outputs exist and ``cfg.overwrite`` is off.
        RecordError: under ``cfg.strict``, the first bad row (its message names ``file:line``).
        InputError: an input is missing or truncated.
    """
    check_lengths(cfg.max_length, cfg.max_response_length)
    if not paths:
        raise ValueError("no input files")
    spec = ShardSpec(cfg.shard_index, cfg.num_shards)
    if spec.sharded:
        ranges = plan_ranges(paths, spec)
        prefix = shard_prefix(prefix, spec.index, spec.count)
    else:
        ranges = [FileRange(i, 0, 0, True) for i in range(len(paths))]
    final = {
        "bin": pair_dataset.bin_path(prefix),
        "idx": pair_dataset.idx_path(prefix),
        "prefix": pair_dataset.prefix_lengths_path(prefix),
        "manifest": pair_dataset.manifest_path(prefix),
    }
    check_writable(list(final.values()), cfg.overwrite)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)) or ".", exist_ok=True)
    tmp_prefix = f"{prefix}.tmp-{os.getpid()}"
    shard_dir = f"{tmp_prefix}.shards"
    tmp = {
        "bin": pair_dataset.bin_path(tmp_prefix),
        "idx": pair_dataset.idx_path(tmp_prefix),
        "prefix": pair_dataset.prefix_lengths_path(tmp_prefix),
        "manifest": pair_dataset.manifest_path(tmp_prefix),
    }
    os.makedirs(shard_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    settings = EncodeSettings(
        paths=tuple(paths),
        shard_dir=shard_dir,
        dtype=dtype.name,
        max_length=cfg.max_length,
        max_response_length=cfg.max_response_length,
        strict=cfg.strict,
        max_line_bytes=cfg.max_line_bytes,
        max_examples=cfg.max_examples,
    )
    totals = BuildTotals(bad=BadRows(max_examples=cfg.max_examples))
    infos: list[InputFile] = []
    start = time.perf_counter()
    try:
        builder = IndexedDatasetWriter(tmp["bin"], dtype)
        with builder, _progress(cfg) as bar:
            for result in _ordered_results(
                _chunks(paths, cfg, ranges, infos), cfg.workers, (tokenizer, settings)
            ):
                _log_bad_rows(result, totals)
                totals.add(result)
                if result.error is not None:
                    raise result.error
                builder.add_index(result.shard_prefix)
                for ext in (".bin", ".idx"):
                    os.remove(result.shard_prefix + ext)
                bar.update(result.rows)
                bar.set_postfix(tok_s=f"{totals.tokens / max(time.perf_counter() - start, 1e-9):,.0f}")
        builder.finalize(tmp["idx"])
        elapsed = time.perf_counter() - start
        # From the builder, not by reopening the files: no second read, and an empty .bin cannot be mapped.
        lengths = builder_lengths(builder)
        prefix_lengths = np.frombuffer(totals.prefix_lengths, dtype=np.int32)
        write_prefix_file(tmp["prefix"], [prefix_lengths], len(lengths))
        manifest = _manifest(paths, infos, tokenizer, cfg, dtype, totals, lengths, elapsed)
        manifest["prefix_lengths"] = prefix_lengths_entry(lengths, prefix_lengths)
        if spec.sharded:
            manifest["shard"] = {
                "index": spec.index,
                "count": spec.count,
                "max_examples": cfg.max_examples,
                "ranges": [
                    {"file": paths[r.file_no], "start": r.start, "end": r.end, "whole": r.whole}
                    for r in ranges
                ],
            }
        with open(tmp["manifest"], "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
        if os.path.exists(final["manifest"]):
            os.remove(final["manifest"])  # never let an old manifest vouch for new files mid-rename
        for key in ("bin", "idx", "prefix", "manifest"):
            os.replace(tmp[key], final[key])
    finally:
        shutil.rmtree(shard_dir, ignore_errors=True)
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    logger.info(
        "built %s: %d pairs from %d rows (%d skipped), %d tokens in %.1fs (%.0f tokens/s)",
        prefix,
        totals.pairs_written,
        totals.rows_read,
        totals.bad.total,
        totals.tokens,
        elapsed,
        totals.tokens / max(elapsed, 1e-9),
    )
    return manifest


def builder_lengths(builder) -> np.ndarray:
    """[pairs, 2] sequence lengths an ``IndexedDatasetWriter`` has written."""
    lengths = np.frombuffer(builder.sequence_lengths, dtype=np.int32).astype(np.int64)
    return lengths.reshape(-1, pair_dataset.SEQUENCES_PER_PAIR)


def _log_bad_rows(result: ChunkResult, totals: BuildTotals) -> None:
    for reason, examples in result.bad.examples.items():
        already = totals.bad.counts.get(reason, 0)
        for example in examples[: max(0, totals.bad.max_examples - already)]:
            logger.warning("skipped row %s (%s)", example, reason)


def length_histogram(pair_lengths: np.ndarray, max_length: int) -> dict:
    """Counts of pair lengths in power-of-two bins up to ``2 * max_length``."""
    edges = [0] + [1 << k for k in range(6, 64) if (1 << k) < 2 * max_length] + [2 * max_length]
    counts, _ = np.histogram(pair_lengths, bins=edges)
    return {"bin_edges": edges, "counts": counts.tolist()}


def projected_packing(pair_lengths: np.ndarray, row_lengths=PACKING_ROW_LENGTHS, seed: int = 0) -> dict:
    """Packing efficiency the training-side packer would reach at several row lengths (on a sample)."""
    rng = np.random.default_rng(seed)
    sample = pair_lengths[rng.permutation(len(pair_lengths))[:_PACKING_SAMPLE]]
    out = {}
    for row in row_lengths:
        kept, dropped = split_oversize(sample, row)
        rows = pack_pairs(sample[kept], row)
        out[str(row)] = {
            "efficiency": round(packing_efficiency(sample[kept], rows, row), 5),
            "dropped_fraction": round(len(dropped) / max(len(sample), 1), 6),
            "pairs_per_row": round(len(kept) / max(len(rows), 1), 3),
        }
    return {"sampled_pairs": int(len(sample)), "rows": out}


def length_stats(lengths: np.ndarray, max_length: int) -> dict:
    """The manifest's ``tokens``, ``pair_length_histogram`` and ``packing_projection`` of [pairs, 2] lengths."""
    pair_len = lengths.sum(axis=1) if len(lengths) else np.zeros(0, dtype=np.int64)
    return {
        "tokens": {
            "total": int(lengths.sum()),
            "chosen": int(lengths[:, 0].sum()) if len(lengths) else 0,
            "rejected": int(lengths[:, 1].sum()) if len(lengths) else 0,
            "max_sequence": int(lengths.max()) if len(lengths) else 0,
            "mean_pair": float(pair_len.mean()) if len(pair_len) else 0.0,
        },
        "pair_length_histogram": length_histogram(pair_len, max_length),
        "packing_projection": projected_packing(pair_len),
    }


def _manifest(paths, infos, tokenizer, cfg, dtype, totals: BuildTotals, lengths, elapsed) -> dict:
    return {
        "format": pair_dataset.FORMAT_NAME,
        "format_version": pair_dataset.FORMAT_VERSION,
        "sequences_per_pair": pair_dataset.SEQUENCES_PER_PAIR,
        "sequence_order": ["chosen", "rejected"],
        "created_unix": time.time(),
        "inputs": [i.as_dict() for i in infos],
        "tokenizer": tokenizer.describe(),
        "dtype": dtype.name,
        "max_length": cfg.max_length,
        "max_response_length": cfg.max_response_length,
        "counts": {
            "rows_read": totals.rows_read,
            "pairs_written": totals.pairs_written,
            "skipped": totals.bad.as_dict(),
            "skipped_total": totals.bad.total,
            "truncated_pairs": totals.truncated,
        },
        **length_stats(lengths, cfg.max_length),
        "build": {
            "workers": cfg.workers,
            "chunk_rows": cfg.chunk_rows,
            "seconds": round(elapsed, 3),
            "tokens_per_s": round(totals.tokens / max(elapsed, 1e-9), 1),
            "encoded_tokens": totals.encoded_tokens,
            "main_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "worker_peak_rss_kb": sorted(totals.worker_peak_rss_kb.values()),
        },
    }
