"""Save, find and restore checkpoints with megatron-core ``dist_checkpointing``.

Layout under a checkpoint root::

    iter_0000100/            dist_checkpointing shards (any TP/PP/DP layout can load them)
        polar_config.yaml    the resolved configuration that produced it
        train_state.json     step, consumed samples, data position, lr-scheduler state
        COMPLETE             written last, atomically: without it the directory is ignored

A process killed in the middle of a save leaves a directory without ``COMPLETE``; resume then picks the
previous complete checkpoint, and the next save at that step replaces the partial one.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.validation import StrictHandling
from torch import nn

from megatron_polar.checkpoint import optim_shards
from megatron_polar.parallel import comm
from megatron_polar.utils.errors import CheckpointError
from megatron_polar.utils.io import write_text_atomic
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

MARKER = "COMPLETE"
CONFIG_FILE = "polar_config.yaml"
STATE_FILE = "train_state.json"
_NAME = re.compile(r"^iter_(\d{7,})$")


def checkpoint_name(step: int) -> str:
    return f"iter_{step:07d}"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def list_complete(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _NAME.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_complete(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    done = list_complete(root)
    return done[-1][1] if done else None


def resolve(path: str | Path) -> Path:
    """Accept a checkpoint directory or a root holding ``iter_*`` directories; must be complete."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if _NAME.match(path.name) or (path / MARKER).exists() or (path / "metadata.json").exists():
        if not is_complete(path):
            raise CheckpointError(f"checkpoint {path} is incomplete (no {MARKER} marker): it was interrupted")
        return path
    latest = latest_complete(path)
    if latest is None:
        raise CheckpointError(f"no complete checkpoint (iter_*/{MARKER}) under {path}")
    return latest


def _atomic_write(path: Path, text: str) -> None:
    # Synced before the rename: a crash must not leave an empty completion marker behind.
    write_text_atomic(path, text, fsync=True)


def _unwrap(chunk: nn.Module) -> nn.Module:
    return getattr(chunk, "module", chunk)


def _model_sharded_state(chunks: list[nn.Module]) -> dict[str, Any]:
    if len(chunks) == 1:
        return {"model": _unwrap(chunks[0]).sharded_state_dict()}
    return {f"model{i}": _unwrap(c).sharded_state_dict() for i, c in enumerate(chunks)}


def _rng_sharded_object() -> ShardedObject:
    """This rank's RNG state, one object per (PP, TP) rank, replicated over DP."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    pp, tp = comm.pp_rank(), comm.tp_rank()
    pp_n, tp_n = comm.pp_size(), comm.tp_size()
    return ShardedObject("rng_state", state, (pp_n, tp_n), (pp, tp), replica_id=comm.dp_rank())


def _layout() -> dict:
    return {
        "tp": comm.tp_size(),
        "pp": comm.pp_size(),
        "dp": comm.dp_size(),
    }


def _barrier() -> None:
    comm.barrier()


def save(
    root: str | Path,
    step: int,
    chunks: list[nn.Module],
    optimizer=None,
    train_state: dict | None = None,
    config_yaml: str | None = None,
    keep_last: int = 0,
) -> Path:
    """Collectively save a checkpoint for ``step``; return its directory once it is complete."""
    root = Path(root)
    path = root / checkpoint_name(step)
    rank0 = comm.is_global_rank0()
    if rank0:
        root.mkdir(parents=True, exist_ok=True)
        if path.exists():  # a partial save of this step, or an older run's: replace it
            shutil.rmtree(path)
        path.mkdir()
    _barrier()
    t0 = time.monotonic()
    state = _model_sharded_state(chunks)
    if optimizer is not None:
        # Each rank writes only its own optimizer shard, in a layout any TP/PP/DP reloads (optim_shards).
        state["optimizer"] = optim_shards.sharded_state_dict(optimizer, state)
        state["rng_state"] = _rng_sharded_object()
    dist_checkpointing.save(state, str(path))
    _barrier()
    if rank0:
        if config_yaml is not None:
            _atomic_write(path / CONFIG_FILE, config_yaml)
        state_json = {"step": step, "layout": _layout(), **(train_state or {})}
        _atomic_write(path / STATE_FILE, json.dumps(state_json, indent=2))
        _atomic_write(path / MARKER, json.dumps({"step": step, "time": time.time()}))
        if keep_last > 0:
            prune(root, keep_last)
    _barrier()
    log.info("saved checkpoint %s in %.1fs", path, time.monotonic() - t0)
    return path


def prune(root: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints, and partial ones older than them."""
    done = list_complete(root)
    for _, old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    if done[-keep_last:]:
        oldest_kept = done[-keep_last:][0][0]
        for child in Path(root).iterdir():
            m = _NAME.match(child.name)
            if m and int(m.group(1)) < oldest_kept and not is_complete(child):
                shutil.rmtree(child, ignore_errors=True)


def read_train_state(path: str | Path) -> dict:
    path = resolve(path)
    try:
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / STATE_FILE} is missing or corrupt: {exc}") from exc


def read_config_yaml(path: str | Path) -> str:
    path = resolve(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CheckpointError(f"{cfg} is missing: not a megatron_polar checkpoint")
    return cfg.read_text()


def keeps_per_parameter_step(inner) -> bool:
    """Whether ``inner`` (the torch optimizer inside megatron-core's wrapper) keeps ``step`` per parameter.

    torch's Adam/AdamW do, and megatron-core's checkpoint code expects it there when neither TE nor apex
    is installed (megatron/core/optimizer/distrib_optimizer.py:639-643 and :817-825 in 0.16.1). The fused
    Adams keep ``step`` in the param group: Transformer Engine's ``FusedAdam.state_dict`` un-scales every
    per-parameter key through ``name_to_dtype_map``, which holds only exp_avg, exp_avg_sq and
    master_param (transformer_engine/pytorch/optimizers/fused_adam.py:199-203, :478-497, :279), so a
    ``step`` there raises KeyError; apex's FusedAdam likewise steps ``group["step"]``
    (apex/optimizers/fused_adam.py:180-186).
    """
    return isinstance(inner, (torch.optim.Adam, torch.optim.AdamW))


def _init_optimizer_state(optimizer) -> None:
    """Give every parameter an Adam state (zeros) so the loading state dict has its structure.

    megatron-core builds the optimizer's loading template from the live state, which a fresh optimizer
    (no step taken yet) does not have. torch's Adam also gets a per-parameter ``step`` (0), which
    megatron-core requires without TE/apex; the fused Adams of TE and apex must not get one.
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None:
            continue
        if getattr(opt, "init_state_fn", None) is not None:
            opt.init_state_fn(inner, opt.config)
        if not keeps_per_parameter_step(inner):
            continue
        for group in inner.param_groups:
            for param in group["params"]:
                inner.state[param].setdefault("step", torch.tensor(0.0))


def _load_optimizer_state(optimizer, state: dict) -> None:
    """``optimizer.load_state_dict`` with a fix for torch's Adam (no TE/apex, e.g. on CPU); the fused
    Adams of TE and apex keep no per-parameter ``step`` and load through megatron-core unchanged.

    megatron-core 0.16 restores Adam's ``step`` from the param groups first and then copies the
    per-parameter tensors into *every* live state key, ``step`` included, which the reshardable format
    does not carry. Copying only the keys the checkpoint has restores the same state. It also hands
    every parameter the *same* ``step`` tensor, which torch's Adam then increments once per parameter
    per step: each parameter gets its own copy back.
    """
    patched = []
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if (
            hasattr(opt, "_set_main_param_and_optimizer_states")
            and hasattr(opt, "model_param_group_index_map")
            and keeps_per_parameter_step(getattr(opt, "optimizer", None))
        ):

            def set_present(model_param, tensors, _opt=opt):
                group_index, group_order = _opt.model_param_group_index_map[model_param]
                main_param = _opt.optimizer.param_groups[group_index]["params"][group_order]
                live = {"param": main_param, **_opt.optimizer.state[main_param]}
                for key, value in tensors.items():
                    live[key].copy_(value)

            if not getattr(opt.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False):
                opt._set_main_param_and_optimizer_states = set_present
                patched.append(opt)
    try:
        optimizer.load_state_dict(state)
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        for param_state in getattr(inner, "state", {}).values():
            if isinstance(param_state.get("step"), torch.Tensor):
                param_state["step"] = param_state["step"].clone()


def _is_extra_state(key: str) -> bool:
    return key.endswith("_extra_state") or "._extra_state/" in key


def check_absent_keys(path: str | Path, absent: set[str]) -> None:
    """Tolerate only Transformer Engine ``_extra_state`` entries (FP8 scaling metadata) missing from a
    checkpoint: one saved with the local spec has none, and TE starts them fresh. Anything else the
    model needs and the checkpoint lacks is an error naming the keys."""
    real = sorted(k for k in absent if not _is_extra_state(k))
    if real:
        shown = ", ".join(real[:8]) + (f" (+{len(real) - 8} more)" if len(real) > 8 else "")
        raise CheckpointError(
            f"cannot load {path}: it has no {shown}. Is it a checkpoint of the same model shape (model=...)?"
        )
    if absent:
        log.info(
            "%s has no Transformer Engine _extra_state for %d modules: they start fresh", path, len(absent)
        )


def _load_module(path: str | Path, module: nn.Module, state: dict) -> None:
    """``load_state_dict`` that lets TE's ``_extra_state`` alone be absent (see check_absent_keys)."""
    result = module.load_state_dict(state, strict=False)
    bad = [k for k in list(result.missing_keys) + list(result.unexpected_keys) if not _is_extra_state(k)]
    if bad:
        raise CheckpointError(
            f"cannot load {path}: keys do not match the model: {', '.join(sorted(bad)[:8])}"
        )


def load(path: str | Path, chunks: list[nn.Module], optimizer=None) -> dict:
    """Collectively load model (and optimizer/RNG if given) from a complete checkpoint; return train state.

    Works for any TP/PP/DP layout, whatever layout saved it.
    """
    path = resolve(path)
    train_state = read_train_state(path)
    saved_layout = train_state.get("layout", {})
    # RNG streams belong to (PP, TP) ranks: they only carry over to the same model-parallel grid.
    same_grid = {k: saved_layout.get(k) for k in ("tp", "pp")} == {k: _layout()[k] for k in ("tp", "pp")}
    state = _model_sharded_state(chunks)
    if optimizer is not None:
        _init_optimizer_state(optimizer)
        state["optimizer"] = optim_shards.sharded_state_dict(optimizer, state, is_loading=True)
        if same_grid:
            state["rng_state"] = _rng_sharded_object()
    try:
        # RETURN_UNEXPECTED: keys this model asks for that the checkpoint lacks are dropped from the
        # request and reported (megatron/core/dist_checkpointing/validation.py:124-196, 0.16.1).
        loaded, _, absent = dist_checkpointing.load(state, str(path), strict=StrictHandling.RETURN_UNEXPECTED)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path and the likely cause
        raise CheckpointError(
            f"cannot load {path}: {exc}. Is it a checkpoint of the same model shape (model=...)?"
        ) from exc
    check_absent_keys(path, absent)
    if len(chunks) == 1:
        _load_module(path, _unwrap(chunks[0]), loaded["model"])
    else:
        for i, c in enumerate(chunks):
            _load_module(path, _unwrap(c), loaded[f"model{i}"])
    if optimizer is not None:
        optim_state, blocks = optim_shards.split_loaded(optimizer, loaded["optimizer"])
        _load_optimizer_state(optimizer, optim_state)
        optim_shards.restore(optimizer, blocks)
        if same_grid:
            from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

            torch.set_rng_state(loaded["rng_state"]["torch"])
            get_cuda_rng_tracker().set_states(loaded["rng_state"]["tracker"])
        else:
            log.info("resharding from %s to %s: RNG states start fresh", saved_layout, _layout())
    log.info("loaded checkpoint %s%s", path, "" if optimizer is not None else " (weights only)")
    return train_state
