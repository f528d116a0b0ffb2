"""Helpers that run the real trainer in spawned gloo ranks or as a CLI subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def base_overrides(task: dict, run_dir: Path, steps: int, extra: list[str] = ()) -> list[str]:
    return [
        f"data.train=[{{path: {task['train']}}}]",
        f"data.valid=[{{path: {task['valid']}}}]",
        "data.seq_length=128",
        "train.global_batch_size=16",
        "train.micro_batch_size=4",
        f"train.train_iters={steps}",
        "train.eval_interval=0",
        "train.precision=fp32",
        "optim.lr=3e-3",
        f"logging.run_dir={run_dir}",
        "logging.log_interval=1000",
        "logging.tensorboard=false",
        "checkpoint.save_interval=0",
        *extra,
    ]


def train_worker(overrides: list[str]) -> dict:
    """Entry for ``run_distributed``: train in this rank and return the result as a dict."""
    from megatron_polar.config import load_config
    from megatron_polar.training.trainer import train

    result = train(load_config(overrides))
    return {
        "step": result.step,
        "reason": result.reason,
        "valid": result.valid,
        "ckpt": result.last_checkpoint,
    }


def read_metrics(run_dir: Path, split: str = "train") -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] == split]


def cli_env() -> dict:
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    return dict(env, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")


def train_cli(overrides: list[str], nproc: int = 1, **popen) -> subprocess.Popen:
    """Start ``python -m megatron_polar.train`` (under torchrun when ``nproc`` > 1)."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "megatron_polar.train", *overrides]
    else:
        from tests.support.launcher import free_port

        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            f"--master-port={free_port()}",
            "-m",
            "megatron_polar.train",
            *overrides,
        ]
    return subprocess.Popen(
        cmd, env=cli_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def train_worker_with_nan(overrides: list[str], nan_step: int) -> dict:
    """Like :func:`train_worker`, but the loss of every micro-batch of step ``nan_step`` is NaN."""
    from megatron_polar.training import forward_step

    real, calls = forward_step.pair_loss, {"n": 0}

    def poisoned(rewards, valid=None):
        calls["n"] += 1
        if calls["n"] in range((nan_step - 1) * 4 + 1, nan_step * 4 + 1):  # 4 micro-batches per step
            rewards = rewards * float("nan")
        return real(rewards, valid)

    forward_step.pair_loss = poisoned
    try:
        return train_worker(overrides)
    except FloatingPointError as exc:
        return {"error": str(exc)}
