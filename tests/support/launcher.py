"""Run a function in N gloo processes with a free port and a hard timeout.

Each worker gets the launcher environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT) that torchrun would set,
so the code under test initialises exactly as in production. A hang fails the test after ``timeout``
seconds instead of stalling CI; a worker's exception is re-raised in the test with its traceback.

On the CPU, ranks fork from a forkserver that has imported torch, megatron-core and megatron_polar once
per pytest session: each rank is still a fresh process (nothing of one test's ranks reaches the next),
but no longer spends seconds importing (megatron-core pulls in wandb and torch.distributed.tensor) before
it starts. The forkserver is a single-threaded process started for this purpose, not pytest's own
multi-threaded one, so forking from it cannot inherit a held lock. With a GPU, ranks are spawned as
before, so no CUDA state is ever forked.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

# Imported once in the forkserver; every rank forks with them loaded. A name that fails to import is
# skipped by multiprocessing (the rank then imports what it needs itself).
PRELOAD = [
    "torch",
    "megatron.core",
    "megatron_polar.training.trainer",
    "megatron_polar.checkpoint.manager",
    "megatron_polar.model.builder",
    "tests.support.training_runs",
    "tests.support.parity_workers",
]
_context = None


def process_context():
    """The multiprocessing context ranks start from: a preloaded forkserver on CPU, spawn with a GPU."""
    global _context
    if _context is None:
        if torch.cuda.is_available():
            _context = mp.get_context("spawn")
        else:
            _context = mp.get_context("forkserver")
            _context.set_forkserver_preload(PRELOAD)
    return _context


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(
    fn: Callable, rank: int, world_size: int, port: int, outdir: str, args: tuple, env: dict[str, str]
) -> None:
    # A forked rank inherits the forkserver's environment, fixed when it started: use the test's.
    os.environ.clear()
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import warnings

    import torch

    warnings.filterwarnings("ignore")  # megatron-core's "TE/apex not installed" notices, once per rank
    torch.set_num_threads(1)
    out = Path(outdir) / f"rank{rank}.pkl"
    try:
        result = fn(*args)
        out.write_bytes(pickle.dumps(("ok", result)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        out.write_bytes(pickle.dumps(("error", traceback.format_exc())))
        raise SystemExit(1) from None
    finally:
        from megatron_polar.parallel import topology

        try:
            topology.destroy()
        except Exception:  # noqa: BLE001
            pass


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 300) -> list[Any]:
    """Call ``fn(*args)`` on ``world_size`` spawned ranks; return each rank's result in rank order."""
    ctx = process_context()
    with tempfile.TemporaryDirectory() as outdir:
        port = free_port()
        procs = [
            ctx.Process(
                target=_entry, args=(fn, r, world_size, port, outdir, args, dict(os.environ)), daemon=False
            )
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results, errors = [], []
        for r in range(world_size):
            path = Path(outdir) / f"rank{r}.pkl"
            if not path.exists():
                results.append(None)
                continue
            status, payload = pickle.loads(path.read_bytes())
            if status == "error":
                errors.append(f"rank {r}:\n{payload}")
            results.append(payload)
        if errors:
            raise RuntimeError("distributed worker failed\n" + "\n".join(errors))
        if hung:
            raise TimeoutError(f"ranks {hung} still running after {timeout:.0f}s (hang)")
        bad = [(r, p.exitcode) for r, p in enumerate(procs) if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"workers exited abnormally: {bad}")
        return results
