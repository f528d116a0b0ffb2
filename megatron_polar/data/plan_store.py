"""Epoch plans on disk: computed once, written atomically, shared by every rank through mmap.

At the paper's scale (351M pairs, 912 ranks) planning an epoch costs minutes of CPU (about 2 minutes
on the writer with 16 packing processes) and its result is 1.6 GB of flat arrays; every rank packing
it again, and holding it in private memory, would cost minutes and gigabytes per rank at every start
and requeue. So one rank (the writer)
builds each plan once and writes it under ``data.plan_dir``; the others wait, then ``np.load(...,
mmap_mode="r")`` it, so a rank's memory holds only the pages of the rows it reads.

A plan is a directory ``<name>-<digest>/`` named after the digest of everything it depends on (the
datasets and their content fingerprints, the blend, the split, seed, epoch, layout, row length and
packing window), holding ``.npy`` arrays and ``meta.json`` (the full key, each array's dtype, shape,
size and CRC-32). It is written into a temporary directory that is renamed into place only when
complete, so a write killed at any point leaves nothing that looks complete. On reuse the writer checks
the key and every checksum; a stale, truncated or corrupt plan is rebuilt, never used. Readers check the
key, shapes and sizes (the checksums were checked by the writer before the barrier) and raise
:class:`PlanError` rather than read a plan that does not match.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import numpy as np

from megatron_polar.utils.errors import PlanError
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

PLAN_FORMAT = "polar-epoch-plan"
PLAN_VERSION = 1
META = "meta.json"
_CHUNK = 1 << 23  # bytes per read when checksumming: flat memory however large the plan


@dataclass
class StoredPlan:
    """Arrays of one plan (memory-mapped when read from disk) and its metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict


def key_digest(key: dict) -> str:
    """Stable digest of a JSON-able key (sorted keys, no whitespace)."""
    return sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _sync_file(f) -> None:
    """Flush and fsync an open file: its bytes are on disk before the plan's rename can expose them."""
    f.flush()
    os.fsync(f.fileno())


def _npy_header(dtype: np.dtype, length: int) -> bytes:
    """The ``.npy`` (format 1.0) header of a 1-D C-order array of ``length`` items of ``dtype``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (length,)}
    )
    return buf.getvalue()


class ArrayStream:
    """One 1-D ``.npy`` array written chunk by chunk, its CRC-32 computed on the way.

    The length is fixed up front (the header comes first), so the writer never holds the array: at
    351M pairs the plan's ``pair_ids`` is 1.4 GB that the writer rank would otherwise keep in memory.
    """

    def __init__(self, file: Path, dtype, length: int):
        self.file, self.dtype, self.length = file, np.dtype(dtype), int(length)
        self.written = 0
        header = _npy_header(self.dtype, self.length)
        self._f = open(file, "wb")
        self._f.write(header)
        self._crc = zlib.crc32(header)

    def append(self, chunk: np.ndarray) -> None:
        """Write the next ``chunk`` (cast to the stream's dtype)."""
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype).reshape(-1)
        if self.written + chunk.size > self.length:
            raise ValueError(f"{self.file}: more than the {self.length} items declared")
        data = memoryview(chunk).cast("B")
        self._f.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self.written += chunk.size

    def close(self) -> dict:
        """Finish the file (it must hold ``length`` items); its entry for ``meta.json``."""
        if self.written != self.length:
            self._f.close()
            raise ValueError(f"{self.file}: {self.written} items written, {self.length} declared")
        _sync_file(self._f)
        self._f.close()
        return {
            "dtype": self.dtype.str,
            "shape": [self.length],
            "bytes": self.file.stat().st_size,
            "crc32": self._crc,
        }


class PlanWriter:
    """A plan being written: a hidden temporary directory beside ``path``, renamed into place by
    :meth:`commit` once every file and ``meta.json`` are on disk (or removed by :meth:`abort`)."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        self._streams: dict[str, ArrayStream] = {}

    def stream(self, name: str, dtype, length: int) -> ArrayStream:
        """Open ``<name>.npy`` for chunked writing (closed by :meth:`commit`)."""
        self._streams[name] = ArrayStream(self.tmp / f"{name}.npy", dtype, length)
        return self._streams[name]

    def commit(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Write ``arrays`` whole, close the streams, write ``meta.json`` and rename the plan into place.

        An existing directory at ``path`` (a stale or corrupt plan) is moved aside and deleted.
        """
        files = {name: s.close() for name, s in self._streams.items()}
        for name, arr in arrays.items():
            file = self.tmp / f"{name}.npy"
            with open(file, "wb") as f:
                np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
                _sync_file(f)
            files[name] = {
                "dtype": np.dtype(arr.dtype).str,
                "shape": list(arr.shape),
                "bytes": file.stat().st_size,
                "crc32": _crc32(file),
            }
        full = {"format": PLAN_FORMAT, "version": PLAN_VERSION, **meta, "files": files}
        with open(self.tmp / META, "w", encoding="utf-8") as f:
            json.dump(full, f, indent=1, sort_keys=True)
            _sync_file(f)
        _fsync_dir(self.tmp)
        if self.path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
            os.replace(self.path, trash / "plan")
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Remove the temporary directory (nothing at ``path`` changes)."""
        for s in self._streams.values():
            s._f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_plan(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` and ``meta`` to the directory ``path`` atomically (temp dir, fsync, rename).

    An existing directory at ``path`` (a stale or corrupt plan) is moved aside and deleted.
    """
    writer = PlanWriter(path)
    try:
        writer.commit(arrays, meta)
    except BaseException:
        writer.abort()
        raise


def check_plan(path: Path, key: dict, full: bool) -> str | None:
    """Why the plan at ``path`` cannot be used for ``key`` (``None`` if it can).

    ``full`` also recomputes every array's CRC-32 (reads the whole plan once, in fixed-size chunks).
    """
    meta_path = path / META
    if not meta_path.is_file():
        return f"{meta_path} missing"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{meta_path} unreadable: {e}"
    if meta.get("format") != PLAN_FORMAT or meta.get("version") != PLAN_VERSION:
        return f"{meta_path}: format {meta.get('format')!r} v{meta.get('version')!r}, expected {PLAN_FORMAT} v{PLAN_VERSION}"
    if meta.get("key") != json.loads(json.dumps(key)):
        return f"{meta_path}: stale (built for other inputs)"
    for name, info in meta.get("files", {}).items():
        file = path / f"{name}.npy"
        if not file.is_file():
            return f"{file} missing"
        if file.stat().st_size != info["bytes"]:
            return f"{file}: {file.stat().st_size} bytes, meta.json says {info['bytes']} (truncated?)"
        if full and _crc32(file) != info["crc32"]:
            return f"{file}: checksum mismatch (corrupt)"
    return None


def read_plan(path: Path) -> StoredPlan:
    """Memory-map the arrays of a checked plan."""
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    arrays = {}
    for name, info in meta["files"].items():
        try:
            arr = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise PlanError(f"{path / name}.npy: unreadable: {e}") from e
        if arr.dtype.str != info["dtype"] or list(arr.shape) != info["shape"]:
            raise PlanError(f"{path / name}.npy: {arr.dtype}{arr.shape} does not match {path / META}")
        arrays[name] = arr
    return StoredPlan(arrays=arrays, meta=meta)


def default_workers() -> int:
    """Processes the plan writer may use: SLURM's ``--cpus-per-task`` when set, else this process's CPUs.

    The writer is one rank of the job; while it packs, the others wait at the barrier, so the cores
    the scheduler gave this rank are idle otherwise.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        cpus = min(cpus, int(slurm))
    return max(1, cpus)


class PlanStore:
    """Where plans live and who writes them.

    Every rank calls :meth:`get` with the same keys in the same order (it is collective when a
    ``barrier`` is given): the writer checks or builds, then all meet at the barrier, then the readers
    map what the writer left.

    Args:
        root: directory of the plans; ``None`` keeps plans in memory (one process, nothing shared).
        is_writer: this rank checks and (re)builds plans.
        barrier: blocks until every rank arrived; ``None`` for a single process.
        workers: processes the writer packs with (``None`` or 0: :func:`default_workers`); any count
            writes the same bytes.
    """

    def __init__(
        self,
        root: str | Path | None,
        is_writer: bool = True,
        barrier: Callable[[], None] | None = None,
        workers: int | None = None,
    ):
        self.root = Path(root) if root is not None else None
        self.is_writer, self.barrier = is_writer, barrier
        self.workers = int(workers) if workers else default_workers()
        self.built = 0  # plans this store computed (tests and logs read it)

    def path(self, name: str, key: dict) -> Path | None:
        return None if self.root is None else self.root / f"{name}-{key_digest(key)[:24]}"

    def get(
        self,
        name: str,
        key: dict,
        build: Callable[..., tuple[dict[str, np.ndarray], dict]],
        *,
        stream: bool = False,
    ) -> StoredPlan:
        """The plan for ``key``: reused when a complete, matching one exists, else built by ``build``.

        ``build`` returns ``(arrays, meta)``; ``meta`` must be JSON-able. The returned plan's meta
        holds ``key`` and whatever ``build`` put in it. With ``stream``, ``build`` is called with a
        :class:`PlanWriter` (``None`` for an in-memory store) and may write some arrays into it
        (:meth:`PlanWriter.stream`) instead of returning them, so the writer never holds them whole.
        """
        path = self.path(name, key)
        if path is None:
            arrays, meta = build(None) if stream else build()
            self.built += 1
            return StoredPlan(arrays=arrays, meta={**meta, "key": key})
        if self.is_writer:
            problem = check_plan(path, key, full=True)
            if problem is None:
                log.info("%s: reusing plan %s", name, path)
            else:
                if (path / META).exists() or path.exists():
                    log.warning("%s: rebuilding plan: %s", name, problem)
                writer = PlanWriter(path)
                try:
                    arrays, meta = build(writer) if stream else build()
                    self.built += 1
                    writer.commit(arrays, {**meta, "key": key})
                except BaseException:
                    writer.abort()
                    raise
                del arrays
                log.info("%s: wrote plan %s", name, path)
        if self.barrier is not None:
            self.barrier()
        problem = None if self.is_writer else check_plan(path, key, full=False)
        if problem is not None:
            raise PlanError(f"{name}: plan written by the writer rank is not usable here: {problem}")
        return read_plan(path)
