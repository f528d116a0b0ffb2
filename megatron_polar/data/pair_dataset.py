"""The on-disk layout of a built POLAR pair dataset, shared by ``data_tools`` and the training side.

A dataset is three files under one prefix:

* ``<prefix>.bin`` / ``<prefix>.idx``: a megatron-core indexed dataset. Each *document* is one pair and
  holds exactly ``SEQUENCES_PER_PAIR = 2`` sequences: index 0 the chosen sequence, index 1 the rejected
  sequence. Each sequence is a complete POLAR sequence, the ids of the whole POLAR string as the
  released training code tokenizes it (see ``megatron_polar.data.format``): it starts with BOS (when the
  tokenizer adds one) and its last token is the reward token. Chosen and rejected of a pair are cut to
  one prompt length, so they share their ids up to the candidate; :func:`shared_prefix_length` gives
  the exact shared length (the longest common prefix of the two id arrays). Tokens are ``uint16`` when the vocabulary has fewer
  than 65500 ids, else ``int32`` (megatron's ``DType.optimal_dtype``).
* ``<prefix>.prefix.npy``: the *shared-prefix sidecar*, a 1-D ``int32`` ``.npy`` array with one entry
  per pair, ``shared_prefix_length(chosen, rejected)`` of its stored ids. Training with
  ``data.share_prefix`` packs pairs by their footprint ``chosen + rejected - prefix`` and reads these
  lengths at plan time, memory-mapped, without reading a token. ``data_tools build`` and ``merge``
  write it; ``data_tools add-prefix-lengths`` adds it to a dataset built before it existed. The
  manifest's ``prefix_lengths`` entry lists it; a dataset without one trains only unshared.
* ``<prefix>.manifest.json``: provenance, tokenizer ids, limits, counts and statistics. It is written
  last, so a dataset without a manifest is an incomplete build.

Packing pairs into rows happens at training time (``megatron_polar.data.packing``), so one build serves
any row length and both the packed and the padded layouts.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from megatron_polar.data import index_format
from megatron_polar.utils.errors import DatasetError

FORMAT_NAME = "polar-pairs"
# 2: whole-string ids of the released algorithm (1 joined per-segment ids, and is refused: rebuild).
FORMAT_VERSION = 2
SEQUENCES_PER_PAIR = 2
CHOSEN, REJECTED = 0, 1  # sequence index within a pair document
_SAMPLED_CHECKS = 16  # pairs whose last tokens are checked on open
PREFIX_LENGTHS_SUFFIX = ".prefix.npy"
PREFIX_LENGTHS_DTYPE = np.dtype("<i4")  # a prefix is shorter than a sequence, and sequences fit int32


def manifest_path(prefix: str) -> str:
    """``<prefix>.manifest.json``."""
    return f"{prefix}.manifest.json"


def bin_path(prefix: str) -> str:
    """``<prefix>.bin``."""
    return f"{prefix}.bin"


def idx_path(prefix: str) -> str:
    """``<prefix>.idx``."""
    return f"{prefix}.idx"


def prefix_lengths_path(prefix: str) -> str:
    """``<prefix>.prefix.npy``: the per-pair shared-prefix lengths."""
    return f"{prefix}{PREFIX_LENGTHS_SUFFIX}"


def add_prefix_lengths_command(prefix: str) -> str:
    """The command that adds the shared-prefix sidecar to a dataset built without one."""
    return f"python -m data_tools add-prefix-lengths {prefix}"


class DatasetManifest(Mapping[str, Any]):
    """``<prefix>.manifest.json`` as read: typed accessors for what the readers use, the JSON as written.

    ``data_tools build`` and ``merge`` write the document (its JSON is unchanged by this class); the
    training data, ``inspect``, ``merge`` and the demo read it through here. An accessor whose key is
    missing or of the wrong type raises :class:`DatasetError` naming the file and the key. It is also a
    read-only mapping of the document's top-level keys, and :meth:`to_dict` gives a copy to modify.
    """

    def __init__(self, document: dict, source: str = "<manifest>") -> None:
        self._doc = document
        self.source = source

    def _get(self, *keys: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
        node: Any = self._doc
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                if optional:
                    return None
                raise DatasetError(f"{self.source}: manifest has no {'.'.join(keys)!r}")
            node = node[key]
        if not isinstance(node, kind) or (isinstance(node, bool) and kind is int):
            raise DatasetError(f"{self.source}: manifest {'.'.join(keys)!r} is {node!r}, not {kind}")
        return node

    # Mapping over the top-level keys (the JSON document, read-only).
    def __getitem__(self, key: str) -> Any:
        return self._doc[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._doc)

    def __len__(self) -> int:
        return len(self._doc)

    def to_dict(self) -> dict:
        """A deep copy of the JSON document."""
        return copy.deepcopy(self._doc)

    @property
    def format_version(self) -> int:
        return self._get("format_version", kind=int)

    @property
    def dtype(self) -> str:
        """numpy name of the token dtype (``uint16`` or ``int32``)."""
        return self._get("dtype", kind=str)

    @property
    def max_length(self) -> int:
        return self._get("max_length", kind=int)

    @property
    def max_response_length(self) -> int:
        return self._get("max_response_length", kind=int)

    @property
    def tokenizer(self) -> dict:
        """``tokenizer.describe()`` of the build: kind, path, vocab_size, bos_id, split/reward token ids."""
        return self._get("tokenizer", kind=dict)

    @property
    def reward_token_id(self) -> int:
        return self._get("tokenizer", "reward_token_id", kind=int)

    @property
    def split_token_id(self) -> int:
        return self._get("tokenizer", "split_token_id", kind=int)

    @property
    def counts(self) -> dict:
        """rows_read, pairs_written, skipped (by reason), skipped_total, truncated_pairs."""
        return self._get("counts", kind=dict)

    @property
    def pairs_written(self) -> int | None:
        """Pairs in the dataset; None for a manifest that does not say."""
        return self._get("counts", "pairs_written", kind=int, optional=True)

    @property
    def tokens(self) -> dict:
        """total, max_sequence, mean_pair."""
        return self._get("tokens", kind=dict)

    @property
    def inputs(self) -> list[dict]:
        """One entry per input file: path, size, mtime, sha256, lines."""
        return self._get("inputs", kind=list)

    @property
    def shard(self) -> dict | None:
        """Shard index, count and input ranges of a sharded build; None for a whole build."""
        return self._get("shard", kind=dict, optional=True)

    @property
    def build(self) -> dict:
        """Build settings and timings (workers, seconds, encoded_tokens, ...)."""
        return self._get("build", kind=dict)


def read_manifest(prefix: str) -> DatasetManifest:
    """Load and check ``<prefix>.manifest.json``.

    Raises:
        DatasetError: naming the file when it is missing, not JSON, of another format or version.
    """
    path = manifest_path(prefix)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: manifest missing (the build did not finish, or wrong prefix)")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: unreadable manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}"
            " (version 2 holds the released whole-string ids: rebuild with python -m data_tools build)"
        )
    return DatasetManifest(manifest, path)


@dataclass
class PairDataset:
    """Read-only, mmap-backed view of a built pair dataset."""

    prefix: str
    manifest: DatasetManifest
    indexed: object  # megatron.core.datasets.indexed_dataset.IndexedDataset

    def __len__(self) -> int:
        return len(self.indexed.document_indices) - 1

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(chosen, rejected)`` token arrays of pair ``i`` (copies: safe after the dataset is closed)."""
        if not 0 <= i < len(self):
            raise IndexError(f"pair {i} out of range [0, {len(self)})")
        base = SEQUENCES_PER_PAIR * i
        return np.array(self.indexed[base + CHOSEN]), np.array(self.indexed[base + REJECTED])

    def pair_lengths(self, copy: bool = True) -> np.ndarray:
        """``[N, 2]`` int32 array of (chosen, rejected) lengths, from the index alone (no token reads).

        A copy by default, because megatron unmaps the index when the ``IndexedDataset`` is garbage
        collected; ``copy=False`` returns the memory-mapped index itself, for use only while this
        dataset is referenced (the plan writer gathers from it without an 8-byte-a-pair copy).
        """
        lengths = np.asarray(self.indexed.sequence_lengths).reshape(-1, SEQUENCES_PER_PAIR)
        return np.array(lengths, dtype=np.int32) if copy else lengths

    @property
    def has_prefix_lengths(self) -> bool:
        """Whether the manifest lists the shared-prefix sidecar (``data.share_prefix`` needs it)."""
        return isinstance(self.manifest.get("prefix_lengths"), dict)

    def prefix_lengths(self) -> np.ndarray:
        """``[N]`` int32 shared-prefix lengths, memory-mapped from ``<prefix>.prefix.npy`` (no token reads).

        Raises:
            DatasetError: naming the file and the command that adds it, when the dataset has none.
        """
        path = prefix_lengths_path(self.prefix)
        if not self.has_prefix_lengths or not os.path.isfile(path):
            raise DatasetError(
                f"{path}: missing; this dataset was built without per-pair shared-prefix lengths, which "
                f"data.share_prefix=true needs. Add them in one streaming pass with "
                f"`{add_prefix_lengths_command(self.prefix)}` (or set data.share_prefix=false)"
            )
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: unreadable: {e}") from e
        if arr.dtype != PREFIX_LENGTHS_DTYPE or arr.shape != (len(self),):
            raise DatasetError(
                f"{path}: {arr.dtype}{arr.shape}, expected {PREFIX_LENGTHS_DTYPE}({len(self)},) "
                f"(stale or corrupt: rerun `{add_prefix_lengths_command(self.prefix)} --overwrite`)"
            )
        return arr

    @property
    def reward_token_id(self) -> int:
        """The id every sequence ends with."""
        return self.manifest.reward_token_id


def shared_prefix_length(chosen: np.ndarray, rejected: np.ndarray) -> int:
    """Length of the longest common prefix of two sequences' ids, each keeping at least its last token.

    With whole-string ids this is where chosen and rejected first differ (usually inside the
    candidate half, past ``[bos] P R [split] P``): a shared-prefix computation may compute that many
    positions once per pair.
    """
    n = min(len(chosen), len(rejected)) - 1
    if n <= 0:
        return 0
    diff = np.flatnonzero(np.asarray(chosen[:n]) != np.asarray(rejected[:n]))
    return int(diff[0]) if diff.size else n


def _sample_positions(n: int, count: int) -> np.ndarray:
    """Up to ``count`` evenly spread positions in ``[0, n)``, both ends included."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(count, n)).astype(np.int64))


def _check_index(prefix: str, manifest: dict, indexed, check_samples: int) -> None:
    """Structural checks of a pair dataset's index in O(``check_samples``) reads, never a full scan.

    Every rank opens every dataset at every start, and at the paper's size the index holds 702M
    sequence lengths and 351M document boundaries: reading them all costs seconds and gigabytes of page
    cache per node. A build writes the index in one pass from the same lengths it writes tokens for,
    and its manifest (written last) records the pair and token counts, so what is checked here is what
    a truncated, overwritten or mismatched file would break: the file sizes implied by the header
    (:mod:`~megatron_polar.data.index_format`: a 34-byte header, then int32 lengths, int64 byte
    pointers and int64 document boundaries), both ends of every array, the totals against the manifest, and boundaries
    and pointers at evenly spread samples.
    """
    idx, bin_ = idx_path(prefix), bin_path(prefix)
    index = indexed.index
    lengths, pointers, docs = index.sequence_lengths, index.sequence_pointers, index.document_indices
    n_pairs, n_seq = len(docs) - 1, len(lengths)
    expected = manifest.get("counts", {}).get("pairs_written")
    if expected is not None and n_pairs != expected:
        raise DatasetError(f"{idx}: {n_pairs} documents, manifest says {expected} pairs")
    idx_bytes = index_format.HEADER_BYTES + lengths.nbytes + pointers.nbytes + docs.nbytes
    if os.path.getsize(idx) != idx_bytes:
        raise DatasetError(f"{idx}: {os.path.getsize(idx)} bytes, its header implies {idx_bytes}")
    where = _sample_positions(n_pairs + 1, check_samples + 1)
    if n_seq != SEQUENCES_PER_PAIR * n_pairs or np.any(docs[where] != SEQUENCES_PER_PAIR * where):
        raise DatasetError(f"{idx}: some documents do not hold exactly {SEQUENCES_PER_PAIR} sequences")
    itemsize = np.dtype(index.dtype).itemsize
    data_bytes = int(pointers[-1]) + int(lengths[-1]) * itemsize if n_seq else 0
    if n_seq and int(pointers[0]) != 0:
        raise DatasetError(f"{idx}: first sequence starts at byte {int(pointers[0])}, not 0")
    if os.path.getsize(bin_) != data_bytes:
        raise DatasetError(
            f"{bin_}: size {os.path.getsize(bin_)} does not match the index ({data_bytes} bytes expected)"
        )
    total = manifest.get("tokens", {}).get("total")
    if total is not None and int(total) * itemsize != data_bytes:
        raise DatasetError(
            f"{bin_}: {data_bytes // itemsize} tokens, {manifest_path(prefix)} says {int(total)}"
        )
    seq = _sample_positions(n_seq - 1, check_samples)  # consecutive sequences are back to back
    if seq.size and np.any(pointers[seq + 1] - pointers[seq] != lengths[seq].astype(np.int64) * itemsize):
        raise DatasetError(f"{idx}: sequence pointers do not follow the sequence lengths")


def open_pair_dataset(prefix: str, check_samples: int = _SAMPLED_CHECKS) -> PairDataset:
    """Open ``<prefix>.{bin,idx,manifest.json}`` and check that they agree.

    Checks (none reads more than ``check_samples`` entries of the index, see :func:`_check_index`):
    all three files exist; the document count equals the manifest's ``pairs_written``; the ``.idx``
    and ``.bin`` sizes are those the index header and its last entries imply; the token total equals
    the manifest's; documents hold exactly two sequences and pointers follow lengths at evenly spread
    samples; the last token of both sequences of ``check_samples`` evenly spread pairs is the
    manifest's reward token id.

    Raises:
        DatasetError: naming the offending file.
    """
    manifest = read_manifest(prefix)
    for path in (bin_path(prefix), idx_path(prefix)):
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: missing")
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    try:
        indexed = IndexedDataset(prefix, mmap=True)
    except Exception as e:  # megatron asserts or struct errors on a corrupt index
        raise DatasetError(f"{idx_path(prefix)}: cannot read index: {e!r}") from e
    ds = PairDataset(prefix=prefix, manifest=manifest, indexed=indexed)
    _check_index(prefix, manifest, indexed, check_samples)
    if len(ds):
        reward = ds.reward_token_id
        for i in _sample_positions(len(ds), check_samples):
            for seq in ds.pair(int(i)):
                if len(seq) == 0 or int(seq[-1]) != reward:
                    raise DatasetError(
                        f"{bin_path(prefix)}: pair {i} does not end with reward token {reward}"
                    )
    if ds.has_prefix_lengths and len(ds):
        _check_prefix_lengths(ds, check_samples)
    return ds


def _check_prefix_lengths(ds: PairDataset, check_samples: int) -> None:
    """The sidecar's shape, and its value at ``check_samples`` evenly spread pairs against the tokens."""
    stored = ds.prefix_lengths()
    for i in np.unique(np.linspace(0, len(ds) - 1, num=min(check_samples, len(ds))).astype(np.int64)):
        if int(stored[i]) != shared_prefix_length(*ds.pair(int(i))):
            raise DatasetError(
                f"{prefix_lengths_path(ds.prefix)}: pair {i} holds {int(stored[i])}, its tokens share "
                f"{shared_prefix_length(*ds.pair(int(i)))} (stale: rerun "
                f"`{add_prefix_lengths_command(ds.prefix)} --overwrite`)"
            )
