"""Orchestration of the demo: each stage reads the previous stage's files and runs the real CLIs.

A stage is skipped when its completion marker (``<stage dir>/DONE``) exists, unless ``rebuild`` is set;
the trainer additionally resumes from its own complete checkpoints. Library code: progress goes
through the rank-aware logger; the CLI (``python -m megatron_polar.demo``) prints the summary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from megatron_polar.utils.io import atomic_open
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DemoSizes:
    """How big each stage is. ``FULL`` is what ``make demo`` runs, ``QUICK`` what the test runs."""

    prompts: int = 1200  # pre-training prompts
    responses_per_policy: int = 2  # rollouts per policy and prompt
    pairs_per_prompt: int = 4  # triples drawn per prompt by `data_tools pair`
    vocab_size: int = 1024  # sentencepiece vocabulary (and model.vocab_size)
    seq_length: int = 512  # packed row length
    global_batch_size: int = 8  # packed rows per step
    micro_batch_size: int = 2
    pretrain_steps: int = 400
    pretrain_lr: float = 1e-3
    pretrain_eval_interval: int = 100
    eval_iters: int = 16  # validation batches per evaluation (caps its cost)
    count_train_rows: int = 2400  # ranked counting rows for fine-tuning
    count_eval_rows: int = 200  # ranked rows over held-out words
    rank_mode: str = "first3"  # `data_tools rank --mode`: (correct, other phrasing) > look-alike wrong
    sft_steps: int = 600
    sft_lr: float = 5e-4
    sft_eval_interval: int = 100
    holdout_word_fraction: float = 0.2
    parallel: str = "pp2"  # pp2 or tp2: the 2-process layout of both training runs
    nproc: int = 2
    seed: int = 1234


FULL = DemoSizes()
QUICK = DemoSizes(
    prompts=40,
    count_train_rows=120,
    count_eval_rows=40,
    pretrain_steps=6,
    pretrain_eval_interval=3,
    eval_iters=2,
    sft_steps=4,
    sft_eval_interval=2,
)


@dataclass
class DemoPaths:
    """Where every stage writes, under one output root."""

    root: Path

    def __post_init__(self) -> None:
        r = self.root
        self.generate = r / "generate"
        self.rollouts = self.generate / "rollouts.jsonl"
        self.count_train = self.generate / "counting_train.ranked.jsonl"
        self.count_eval = self.generate / "counting_eval.ranked.jsonl"
        self.data = r / "data"
        self.tokenizer = self.data / "tokenizer.model"
        self.pairs = self.data / "pretrain_pairs.jsonl"
        self.pairs_holdout = self.data / "pretrain_pairs.holdout.jsonl"
        self.pretrain_train = self.data / "pretrain_train"
        self.pretrain_valid = self.data / "pretrain_valid_holdout"
        self.sft_triples = self.data / "sft_triples.jsonl"
        self.sft_eval_triples = self.data / "sft_eval_triples.jsonl"
        self.sft_train = self.data / "sft_train"
        self.sft_valid = self.data / "sft_valid_holdout"
        self.runs = r / "runs"
        self.pretrain_run = self.runs / "pretrain"
        self.sft_run = self.runs / "sft"
        self.eval = r / "eval"
        self.export = r / "export" / "polar-demo-llama"
        self.report = r / "report"


@dataclass
class StageLog:
    """Wall time of each stage (seconds), and which were reused."""

    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)


def subprocess_env() -> dict[str, str]:
    """The children's environment: this repo importable, one thread per process, quiet warnings."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def run_cli(args: list[str], log_file: Path, *, echo: Callable[[str], bool] | None = None) -> None:
    """Run ``python <args>`` to completion, teeing its output to ``log_file``.

    Lines for which ``echo`` returns True are also logged (progress). Raises ``RuntimeError`` naming
    the log on a non-zero exit.
    """
    cmd = [sys.executable, *args]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("$ %s", " ".join(_short(a) for a in cmd))
    with open(log_file, "a", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if echo is not None and echo(line):
                log.info("  %s", line.rstrip().split("] ", 2)[-1])
        rc = proc.wait()
    if rc != 0:
        tail = "".join(log_file.read_text(encoding="utf-8").splitlines(keepends=True)[-15:])
        raise RuntimeError(f"command failed ({rc}): {' '.join(cmd)}\n--- {log_file} (tail) ---\n{tail}")


def run_parallel(jobs: list[tuple[list[str], Path]]) -> None:
    """Run independent CLI calls side by side (the machine has at least two cores)."""
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for fut in [pool.submit(run_cli, args, logf) for args, logf in jobs]:
            fut.result()


def _short(arg: str) -> str:
    return arg.replace(str(REPO) + os.sep, "")


def free_port() -> int:
    """A free TCP port for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_args(nproc: int, module: str, overrides: list[str]) -> list[str]:
    """``-m torch.distributed.run`` arguments that start ``module`` in ``nproc`` local processes."""
    if nproc == 1:
        return ["-m", module, *overrides]
    return [
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--master-port={free_port()}",
        "-m",
        module,
        *overrides,
    ]


def is_done(stage_dir: Path) -> bool:
    return (stage_dir / "DONE").exists()


def mark_done(stage_dir: Path, info: dict) -> None:
    """Write the stage's completion marker (a small JSON of what it produced)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    tmp = stage_dir / "DONE.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    tmp.replace(stage_dir / "DONE")


def read_done(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "DONE").read_text())


def reset(stage_dir: Path) -> None:
    """Remove a stage's outputs (``--rebuild``)."""
    if stage_dir.exists():
        shutil.rmtree(stage_dir)


def write_jsonl(path: Path, rows) -> int:
    """Write rows atomically; return how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Timer:
    """Context manager recording a stage's wall time into a :class:`StageLog`."""

    def __init__(self, stages: StageLog, name: str):
        self.stages, self.name = stages, name

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        log.info("=== stage %s ===", self.name)
        return self

    def __exit__(self, *exc) -> None:
        dt = time.perf_counter() - self.t0
        self.stages.seconds[self.name] = dt
        if exc[0] is None:
            log.info("=== stage %s finished in %.1f s ===", self.name, dt)
