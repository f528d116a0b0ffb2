"""``merge``: join the shards of a sharded ``build`` or ``pair`` into the one-process output.

Merging refuses to start unless every shard of the set is complete (a ``build`` shard's manifest, a
``pair`` shard's ``.done.json``, are written last and atomically, so a killed shard never looks done) and
all shards were made with the same settings. Outputs are written atomically, as by the builds themselves.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time

import numpy as np

from data_tools.build import builder_lengths, length_stats
from data_tools.index_builder import IndexedDatasetWriter
from data_tools.pairing import done_path
from data_tools.prefix_lengths import prefix_lengths_entry, write_prefix_file
from data_tools.records import BadRows
from data_tools.sharding import shard_path, shard_prefix
from megatron_polar.data import pair_dataset
from megatron_polar.utils.io import check_writable, temp_path
from megatron_polar.utils.logging import get_logger

logger = get_logger(__name__)

# Manifest fields every shard of one build must share.
_SAME = ("format", "format_version", "tokenizer", "dtype", "max_length", "max_response_length")


def _shard_manifests(prefix: str, count: int) -> list[pair_dataset.DatasetManifest]:
    manifests, missing = [], []
    for i in range(count):
        try:
            manifests.append(pair_dataset.read_manifest(shard_prefix(prefix, i, count)))
        except pair_dataset.DatasetError as e:
            missing.append(str(e))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {count} shards are missing or incomplete: " + "; ".join(missing[:5])
        )
    for i, m in enumerate(manifests):
        shard = m.shard or {}
        if shard.get("index") != i or shard.get("count") != count:
            raise ValueError(
                f"{pair_dataset.manifest_path(shard_prefix(prefix, i, count))}: not shard {i} of {count}"
            )
        for key in _SAME:
            if m.get(key) != manifests[0].get(key):
                raise ValueError(
                    f"shard {i} differs from shard 0 in {key!r}: {m.get(key)!r} vs {manifests[0].get(key)!r}"
                )
        if len(m.inputs) != len(shard.get("ranges", [])):
            raise ValueError(f"shard {i}: its inputs and byte ranges disagree")
    return manifests


def _merged_inputs(manifests: list[pair_dataset.DatasetManifest]) -> list[dict]:
    """One entry per input file: the hash where one shard read the whole file, the line count from the
    shard that reached its end."""
    merged: dict[str, dict] = {}
    for m in manifests:
        for info, rng in zip(m.inputs, m.shard["ranges"]):
            entry = merged.setdefault(info["path"], {**info, "sha256": None, "lines": 0})
            if rng["whole"]:
                entry["sha256"] = info["sha256"]
            entry["lines"] = max(entry["lines"], info["lines"])
    return list(merged.values())


def _merged_counts(manifests: list[pair_dataset.DatasetManifest], max_examples: int) -> dict:
    bad = BadRows(max_examples=max_examples)
    truncated: dict[str, int] = {}
    rows = pairs = 0
    for m in manifests:  # in shard (= input) order, so the kept examples are the earliest ones
        c = m.counts
        rows += c["rows_read"]
        pairs += c["pairs_written"]
        for k, v in c["truncated_pairs"].items():
            truncated[k] = truncated.get(k, 0) + v
        part = BadRows(max_examples=max_examples)
        for reason, d in c["skipped"].items():
            part.counts[reason], part.examples[reason] = d["count"], list(d["examples"])
        bad.merge(part)
    return {
        "rows_read": rows,
        "pairs_written": pairs,
        "skipped": bad.as_dict(),
        "skipped_total": bad.total,
        "truncated_pairs": truncated,
    }


def _shard_sidecar(prefix: str, index: int, count: int, manifest: dict) -> str:
    """The shard's ``.prefix.npy`` (checked to exist with one entry per pair)."""
    shard = shard_prefix(prefix, index, count)
    path = pair_dataset.prefix_lengths_path(shard)
    if "prefix_lengths" not in manifest or not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: missing (shard built by an older data_tools); run "
            f"`{pair_dataset.add_prefix_lengths_command(shard)}` on each such shard, then merge again"
        )
    n = np.load(path, mmap_mode="r").shape[0]
    if n != manifest["counts"]["pairs_written"]:
        raise ValueError(
            f"{path}: {n} entries, its manifest says {manifest['counts']['pairs_written']} pairs"
        )
    return path


def merge_build(prefix: str, count: int, overwrite: bool = False, remove_shards: bool = False) -> dict:
    """Join ``<prefix>.shard-<i>-of-<count>`` into ``<prefix>``; returns the merged manifest.

    The ``.bin``/``.idx``/``.prefix.npy`` equal a one-process build's byte for byte; the manifest
    equals its in every field but the timings (``created_unix``, ``build``) and the hashes of inputs
    split between shards.
    """
    start = time.perf_counter()
    manifests = _shard_manifests(prefix, count)
    final = {
        "bin": pair_dataset.bin_path(prefix),
        "idx": pair_dataset.idx_path(prefix),
        "prefix": pair_dataset.prefix_lengths_path(prefix),
        "manifest": pair_dataset.manifest_path(prefix),
    }
    check_writable(list(final.values()), overwrite)
    shard_sidecars = [_shard_sidecar(prefix, i, count, m) for i, m in enumerate(manifests)]
    tmp_prefix = f"{prefix}.tmp-{os.getpid()}"
    tmp = {
        "bin": pair_dataset.bin_path(tmp_prefix),
        "idx": pair_dataset.idx_path(tmp_prefix),
        "prefix": pair_dataset.prefix_lengths_path(tmp_prefix),
        "manifest": pair_dataset.manifest_path(tmp_prefix),
    }
    dtype = np.dtype(manifests[0].dtype)
    try:
        with IndexedDatasetWriter(tmp["bin"], dtype) as builder:
            for i, m in enumerate(manifests):  # empty shards too: their index is checked like any other
                shard, before = shard_prefix(prefix, i, count), len(builder.document_indices)
                builder.add_index(shard)
                if len(builder.document_indices) - before != m.pairs_written:
                    raise pair_dataset.DatasetError(
                        f"{pair_dataset.idx_path(shard)}: {len(builder.document_indices) - before} "
                        f"documents, its manifest says {m.pairs_written} pairs"
                    )
            builder.finalize(tmp["idx"])
        lengths = builder_lengths(builder)
        write_prefix_file(tmp["prefix"], (np.load(p, mmap_mode="r") for p in shard_sidecars), len(lengths))
        max_examples = manifests[0].shard.get("max_examples", 5)
        manifest = {k: v for k, v in manifests[0].to_dict().items() if k != "shard"}
        manifest.update(
            created_unix=time.time(),
            inputs=_merged_inputs(manifests),
            counts=_merged_counts(manifests, max_examples),
            **length_stats(lengths, manifests[0].max_length),
            prefix_lengths=prefix_lengths_entry(lengths, np.load(tmp["prefix"], mmap_mode="r")),
        )
        manifest["build"] = {
            "shards": count,
            "shard_seconds": [m.build["seconds"] for m in manifests],
            "encoded_tokens": sum(m.build["encoded_tokens"] for m in manifests),
            "merge_seconds": round(time.perf_counter() - start, 3),
            "main_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
        with open(tmp["manifest"], "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
        if os.path.exists(final["manifest"]):
            os.remove(final["manifest"])
        for key in ("bin", "idx", "prefix", "manifest"):
            os.replace(tmp[key], final[key])
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    if remove_shards:
        for i in range(count):
            p = shard_prefix(prefix, i, count)
            for path in (
                pair_dataset.manifest_path(p),  # first: a half-removed shard never looks complete
                pair_dataset.bin_path(p),
                pair_dataset.idx_path(p),
                pair_dataset.prefix_lengths_path(p),
            ):
                os.remove(path)
    logger.info("merged %d shards into %s: %d pairs", count, prefix, manifest["counts"]["pairs_written"])
    return manifest


# ---- pair -------------------------------------------------------------------------------------------


def merge_pair(
    output: str,
    count: int,
    holdout_output: str | None = None,
    overwrite: bool = False,
    remove_shards: bool = False,
) -> dict:
    """Concatenate ``pair`` shards in index order into ``output`` (and ``holdout_output``); return the
    summed counters. Plain JSONL equals the one-process output byte for byte; ``.gz`` shards are joined as
    gzip members, which decompress to it."""
    stats, missing = [], []
    for i in range(count):
        marker = done_path(shard_path(output, i, count))
        if not os.path.isfile(marker):
            missing.append(marker)
            continue
        with open(marker, encoding="utf-8") as f:
            stats.append(json.load(f))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {count} pair shards are incomplete: {', '.join(missing[:5])}"
        )
    for i, s in enumerate(stats):
        if s.get("shard") != {"index": i, "count": count}:
            raise ValueError(f"{done_path(shard_path(output, i, count))}: not shard {i} of {count}")
        if s.get("settings") != stats[0].get("settings"):
            raise ValueError(f"pair shard {i} was made with other settings than shard 0")
    outputs = [output] + ([holdout_output] if holdout_output else [])
    check_writable(outputs, overwrite)
    for out in outputs:
        tmp = temp_path(out)
        try:
            with open(tmp, "wb") as dst:
                for i in range(count):
                    with open(shard_path(out, i, count), "rb") as src:
                        shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    total = _sum_pair_stats([s["stats"] for s in stats])
    if remove_shards:
        for i in range(count):
            os.remove(done_path(shard_path(output, i, count)))
            for out in outputs:
                os.remove(shard_path(out, i, count))
    return total


def _sum_pair_stats(parts: list[dict]) -> dict:
    total: dict = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, dict):  # {reason: {count, examples}}
                agg = total.setdefault(k, {})
                for reason, d in v.items():
                    a = agg.setdefault(reason, {"count": 0, "examples": []})
                    a["count"] += d["count"]
                    a["examples"] = (a["examples"] + d["examples"])[:5]
            else:
                total[k] = total.get(k, 0) + v
    return total
