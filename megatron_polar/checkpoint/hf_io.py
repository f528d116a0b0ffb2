"""Files of an HF checkpoint directory: lazy safetensors reading, streamed sharded writing, atomic output.

Reading opens each shard with ``safe_open`` (memory-mapped) and hands out one tensor at a time; writing
buffers tensors up to ``max_shard_bytes`` and flushes them as a shard, so neither direction holds a
second full copy of a model. Output goes to a sibling ``<dir>.tmp-<id>`` that is renamed into place only
once every file is written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from megatron_polar.utils.errors import ConversionError
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(text: str | int) -> int:
    """``"4GB"``, ``"500MiB"`` or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ConversionError(f"cannot parse size {text!r}; use e.g. 4GB, 500MB or a byte count")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def read_json(path: Path) -> dict:
    """A JSON file, or a ConversionError naming it."""
    if not path.is_file():
        raise ConversionError(f"missing file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from exc


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


class SafetensorsReader:
    """The tensors of an HF directory (``model.safetensors`` or a sharded index), read on demand."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        if not self.dir.is_dir():
            raise ConversionError(f"HF checkpoint directory {self.dir} does not exist")
        index = self.dir / INDEX_FILE
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index} has no weight_map")
            self.file_of = dict(weight_map)
        elif (self.dir / SINGLE_FILE).is_file():
            with safe_open(self.dir / SINGLE_FILE, framework="pt") as f:
                self.file_of = {k: SINGLE_FILE for k in f.keys()}
        else:
            found = sorted(p.name for p in self.dir.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
            hint = f" (found {found}: re-save them with safe_serialization=True)" if found else ""
            raise ConversionError(f"missing file {self.dir / SINGLE_FILE} or {index}{hint}")
        for shard in sorted(set(self.file_of.values())):
            if not (self.dir / shard).is_file():
                raise ConversionError(f"missing file {self.dir / shard}, listed in {INDEX_FILE}")
        self._open: dict[str, object] = {}
        self.used: set[str] = set()

    def names(self) -> set[str]:
        return set(self.file_of)

    def _handle(self, shard: str):
        if shard not in self._open:
            self._open[shard] = safe_open(self.dir / shard, framework="pt")
        return self._open[shard]

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> Tensor:
        """Tensor ``name``; a ConversionError names it when it is missing or not shaped ``shape``."""
        shard = self.file_of.get(name)
        if shard is None:
            raise ConversionError(f"tensor {name} is missing from {self.dir}")
        handle = self._handle(shard)
        if shape is not None:
            got = tuple(handle.get_slice(name).get_shape())
            if got != tuple(shape):
                raise ConversionError(
                    f"tensor {name} in {self.dir / shard} has shape {list(got)}, expected {list(shape)} "
                    "from config.json"
                )
        self.used.add(name)
        return handle.get_tensor(name)


class ShardedSafetensorsWriter:
    """Write tensors in order into shards of at most ``max_shard_bytes`` (one tensor may exceed it)."""

    def __init__(self, out_dir: Path, max_shard_bytes: int, dtype: torch.dtype) -> None:
        self.dir = out_dir
        self.max_bytes = max_shard_bytes
        self.dtype = dtype
        self._buffer: dict[str, Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: Tensor) -> None:
        # A private contiguous copy: views of one packed tensor must not share storage inside a file.
        tensor = tensor.detach().to("cpu", self.dtype, copy=True).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_bytes:
            self._flush()
        self._buffer[name] = tensor
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        tmp_name = f"shard-{len(self._shards):05d}.partial"
        save_file(self._buffer, str(self.dir / tmp_name), metadata={"format": "pt"})
        self._shards.append((tmp_name, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def finish(self) -> list[str]:
        """Flush, give the shards their final names and write the index; return the file names."""
        if self._buffer:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.replace(self.dir / self._shards[0][0], self.dir / SINGLE_FILE)
            return [SINGLE_FILE]
        weight_map, names = {}, []
        for k, (tmp_name, tensors) in enumerate(self._shards, start=1):
            final = f"model-{k:05d}-of-{n:05d}.safetensors"
            os.replace(self.dir / tmp_name, self.dir / final)
            weight_map.update(dict.fromkeys(tensors, final))
            names.append(final)
        write_json(
            self.dir / INDEX_FILE, {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        )
        return names + [INDEX_FILE]


def check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty target directory (or a file) unless ``overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"output {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConversionError(f"output directory {out_dir} is not empty; pass --overwrite to replace it")


@contextmanager
def atomic_directory(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to fill; on success it replaces ``out_dir``.

    On any exception the temporary directory is removed and ``out_dir`` is left as it was.
    """
    out_dir = Path(out_dir)
    check_target(out_dir, overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f"{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    log.info("wrote %s", out_dir)
