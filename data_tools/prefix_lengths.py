"""The shared-prefix sidecar ``<prefix>.prefix.npy``: one ``int32`` per pair, written by ``build``,
``merge`` and ``add-prefix-lengths``.

Training with ``data.share_prefix`` packs each pair by its footprint ``chosen + rejected - prefix``; the
plan needs every pair's prefix length at start-up, and reading the tokens of 351M pairs to find them on
every start is not an option. So the build records them once, beside the index (see
:mod:`megatron_polar.data.pair_dataset`). All three writers go through :func:`write_prefix_file`, so a
sharded build merged and a one-process build give the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import numpy as np

from data_tools.writers import check_writable
from megatron_polar.data import pair_dataset
from megatron_polar.utils.logging import get_logger

logger = get_logger(__name__)

_CHUNK_PAIRS = 1 << 16  # pairs per slice when streaming over a dataset


def write_prefix_file(path: str, parts: Iterable[np.ndarray], pairs: int) -> None:
    """Write ``pairs`` prefix lengths, given as consecutive ``parts``, to the ``.npy`` file ``path``.

    The header is written first for the known count and the data streamed after it, so memory stays at
    one part however large the dataset. Callers write to a temporary name and rename.

    Raises:
        ValueError: the parts do not add up to ``pairs`` entries.
    """
    out = np.lib.format.open_memmap(path, mode="w+", dtype=pair_dataset.PREFIX_LENGTHS_DTYPE, shape=(pairs,))
    at = 0
    for part in parts:
        part = np.asarray(part)
        if at + part.size > pairs:
            raise ValueError(f"{path}: more than the {pairs} prefix lengths announced")
        out[at : at + part.size] = part
        at += part.size
    if at != pairs:
        raise ValueError(f"{path}: {at} prefix lengths written, {pairs} announced")
    out.flush()
    del out  # unmap before the caller renames the file


def prefix_lengths_entry(lengths: np.ndarray, prefix: np.ndarray) -> dict:
    """The manifest's ``prefix_lengths`` entry: where the sidecar is and what sharing saves.

    ``lengths`` is ``[pairs, 2]`` (chosen, rejected), ``prefix`` ``[pairs]``.
    """
    total = int(lengths.sum()) if len(lengths) else 0
    shared = int(np.asarray(prefix, dtype=np.int64).sum())
    return {
        "file_suffix": pair_dataset.PREFIX_LENGTHS_SUFFIX,
        "dtype": pair_dataset.PREFIX_LENGTHS_DTYPE.name,
        "shared_tokens": shared,
        "footprint_tokens": total - shared,  # tokens processed with the prefix once per pair
        "footprint_ratio": round((total - shared) / total, 6) if total else 1.0,
    }


def _dataset_prefix_lengths(ds: pair_dataset.PairDataset) -> Iterable[np.ndarray]:
    """Prefix lengths of every pair, computed from the tokens, a slice of pairs at a time."""
    for lo in range(0, len(ds), _CHUNK_PAIRS):
        hi = min(len(ds), lo + _CHUNK_PAIRS)
        yield np.fromiter(
            (pair_dataset.shared_prefix_length(*ds.pair(i)) for i in range(lo, hi)),
            dtype=pair_dataset.PREFIX_LENGTHS_DTYPE,
            count=hi - lo,
        )


def add_prefix_lengths(prefix: str, overwrite: bool = False) -> dict:
    """Add ``<prefix>.prefix.npy`` to a built dataset in one streaming pass; returns its manifest entry.

    The sidecar is written under a temporary name and renamed, then the manifest is rewritten the same
    way with the new entry: killed at any point, the dataset either lists a complete sidecar or none.

    Raises:
        FileExistsError: the manifest already lists a sidecar and ``overwrite`` is off.
        DatasetError: the dataset is missing, incomplete or corrupt.
    """
    ds = pair_dataset.open_pair_dataset(prefix)
    final = pair_dataset.prefix_lengths_path(prefix)
    if ds.has_prefix_lengths:
        check_writable([final], overwrite)
    tmp = f"{final}.tmp-{os.getpid()}"
    tmp_manifest = f"{pair_dataset.manifest_path(prefix)}.tmp-{os.getpid()}"
    try:
        write_prefix_file(tmp, _dataset_prefix_lengths(ds), len(ds))
        entry = prefix_lengths_entry(ds.pair_lengths(), np.load(tmp, mmap_mode="r"))
        manifest = {**ds.manifest, "prefix_lengths": entry}
        with open(tmp_manifest, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
        os.replace(tmp, final)
        os.replace(tmp_manifest, pair_dataset.manifest_path(prefix))
    finally:
        for path in (tmp, tmp_manifest):
            if os.path.exists(path):
                os.remove(path)
    logger.info(
        "%s: %d pairs share %d prefix tokens; footprint %.3f of the sequence tokens",
        final,
        len(ds),
        entry["shared_tokens"],
        entry["footprint_ratio"],
    )
    return entry
