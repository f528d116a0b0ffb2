"""One-GPU smoke run of the cluster path, for NVIDIA's PyTorch container (its Python; no venv).

    make gpu-smoke                        # = python benchmarks/gpu_smoke.py --out gpu_smoke.json
    python benchmarks/gpu_smoke.py --checks versions,thd_sync --out smoke.json

Each check runs in its own subprocess with a time limit: a failure or a hang is recorded and the next
check still runs. Prints one table and writes every figure as JSON (atomically); the JSON's top-level
``measurements`` (shape_1b's steps, ``polar-step/1``) is what ``python -m megatron_polar.plan
--calibrate gpu_smoke.json`` reads. Checks:

  versions      torch / TE / apex / megatron-core versions, `pip check`, picked layer spec and optimizer
  launcher_env  launch/common.sh's environment applied, then topology start-up (NCCL)
  resume        tiny model, TE, packed THD rows, bf16, overlapped grad reduce + param gather: 3 steps, save,
                resume for 2 more (distributed optimizer on and off); loss continuous across the resume
  fp16          3 steps of fp16, grad norms within 10x of bf16's on the same data
  fp8           3 steps each of FP8 `delayed` and `tensorwise`
  thd_sync      one THD forward/backward under torch.cuda.set_sync_debug_mode("warn"): host syncs
  shape_1b      a ~1B-parameter step at 8k- and 32k-token rows: tokens/s, MFU, peak memory vs the plan
  local_to_te   a local-spec checkpoint loaded into the TE model scores within 1e-3
  pytest_gpu    `pytest -m gpu`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = 989.0  # H100/H800/H200 dense BF16 per GPU
TINY_GPU = [
    "model.transformer_impl=transformer_engine",
    "data.layout=packed",
    "train.precision=bf16",
    "parallel.use_distributed_optimizer=true",
    "parallel.overlap_grad_reduce=true",
    "parallel.overlap_param_gather=true",
]


# ------------------------------------------------------------------------------------------- checks
def check_versions() -> dict:
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    pip = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    from megatron.core import optimizer as mcore_optimizer

    from megatron_polar.config import load_config
    from megatron_polar.model.builder import resolve_use_te

    return {
        "python": sys.version.split()[0],
        "torch": version("torch"),
        "transformer_engine": version("transformer_engine") or version("transformer-engine"),
        "apex": version("apex"),
        "megatron_core": version("megatron-core") or version("megatron_core"),
        "pip_check_rc": pip.returncode,
        "pip_check": (pip.stdout + pip.stderr).strip()[-2000:],
        "layer_spec": "transformer_engine" if resolve_use_te(load_config(["model=tiny"])) else "local",
        "optimizer": f"{mcore_optimizer.Adam.__module__}.{mcore_optimizer.Adam.__name__}",
    }


def launcher_environment() -> dict[str, str]:
    """What launch/common.sh exports on this node (its cluster and common environment)."""
    script = "source launch/common.sh; polar_env_common; polar_env_cluster; env -0"
    out = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "POLAR_ROOT": str(REPO)},
        timeout=60,
    )
    pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    return dict(pairs)


def check_launcher_env() -> dict:
    env = launcher_environment()
    code = (
        "from megatron_polar.config import load_config\n"
        "from megatron_polar.parallel import topology\n"
        "t = topology.initialize(load_config([]).parallel, 1234)\n"
        "print(t.world_size, t.device)\n"
        "topology.destroy()\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    keys = (
        "GLOO_SOCKET_IFNAME",
        "NCCL_SOCKET_IFNAME",
        "NVTE_ALLOW_NONDETERMINISTIC_ALGO",
        "CUDA_DEVICE_MAX_CONNECTIONS",
    )
    return {"topology": res.stdout.strip(), **{k: env.get(k) for k in keys}}


def _task(root: Path) -> dict:
    from tests.support.synthetic_task import build_task

    return build_task(root, n_train=128, n_valid=32)


def _train(task: dict, run_dir: Path, steps: int, extra: list[str]) -> list[dict]:
    from tests.support.launcher import run_distributed
    from tests.support.training_runs import base_overrides, read_metrics, train_worker

    run_distributed(train_worker, 1, base_overrides(task, run_dir, steps, extra), timeout=400)
    return read_metrics(run_dir)


def check_resume() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        task = _task(Path(tmp) / "task")
        for dist_opt in ("true", "false"):
            extra = [*TINY_GPU, f"parallel.use_distributed_optimizer={dist_opt}"]
            straight = _train(task, Path(tmp) / f"straight{dist_opt}", 5, extra)
            _train(task, Path(tmp) / f"broken{dist_opt}", 5, [*extra, "train.exit_after_iters=3"])
            resumed = _train(task, Path(tmp) / f"broken{dist_opt}", 5, extra)
            gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(resumed, straight, strict=True))
            out[f"dist_opt_{dist_opt}_max_loss_gap"] = gap
            out[f"dist_opt_{dist_opt}_losses"] = [round(r["loss"], 5) for r in resumed]
            if [r["step"] for r in resumed] != [1, 2, 3, 4, 5] or gap > 2e-2:
                raise AssertionError(f"resume not continuous (dist_opt={dist_opt}): gap {gap}")
    return out


def check_fp16() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        task = _task(Path(tmp) / "task")
        bf16 = _train(task, Path(tmp) / "bf16", 3, TINY_GPU)
        fp16 = _train(task, Path(tmp) / "fp16", 3, [*TINY_GPU, "train.precision=fp16"])
    b = [r["grad_norm"] for r in bf16]
    f = [r["grad_norm"] for r in fp16 if not r["skipped"]]
    ratio = (sum(f) / len(f)) / (sum(b) / len(b)) if f else 0.0
    out = {
        "bf16_grad_norms": b,
        "fp16_grad_norms": f,
        "ratio": ratio,
        "fp16_skipped": sum(r["skipped"] for r in fp16),
    }
    if not 0.1 < ratio < 10:
        raise AssertionError(f"fp16/bf16 grad norm ratio {ratio}")
    return out


def check_fp8() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        task = _task(Path(tmp) / "task")
        for recipe in ("delayed", "tensorwise"):
            rows = _train(
                task, Path(tmp) / recipe, 3, [*TINY_GPU, "model.fp8=hybrid", f"model.fp8_recipe={recipe}"]
            )
            out[recipe] = [round(r["loss"], 5) for r in rows]
            if len(rows) != 3 or not all(r["loss"] == r["loss"] for r in rows):
                raise AssertionError(f"fp8 {recipe}: {out[recipe]}")
    return out


def _random_rows(total: int, pair_tokens: int, vocab: int, seed: int):
    import random

    rng = random.Random(seed)
    pairs = []
    while sum(len(a) + len(b) for a, b in pairs) + 2 * pair_tokens <= total:
        pairs.append(tuple([rng.randrange(1, vocab) for _ in range(pair_tokens)] for _ in range(2)))
    return pairs


def gpu_spec(name: str):
    """The planner's figures for the GPU torch names (H800, its default, when unknown).

    H200 SXM: NVLink 900 GB/s and HBM3e 4.8 TB/s (NVIDIA's H200 datasheet); H100 SXM as the planner's.
    """
    from dataclasses import replace

    from megatron_polar.planning.performance import H100, GpuSpec

    if "H200" in name:
        return replace(H100, hbm_gb_s=4800.0)
    if "H100" in name:
        return H100
    return GpuSpec()


def step_figures(cfg, batch, elapsed: float, peak_mem_bytes: int, gpu_name: str, host_syncs: int = 0) -> dict:
    """Figures of one timed single-GPU step of ``batch``, with its ``polar-step/1`` record for the planner.

    ``tokens_per_s`` and ``mfu`` count the real tokens; the record counts every processed token (the
    padding tail of a row included) with the attended length of the same segments, as ``--calibrate``
    expects (:mod:`megatron_polar.planning.calibration`).
    """
    from megatron_polar.planning.calibration import attended_length, measurement_record
    from megatron_polar.planning.flops import model_flops
    from megatron_polar.planning.performance import Layout

    psp = batch.packed_seq_params
    if psp is None:
        raise ValueError("step_figures expects a THD batch (collate_packed(..., thd=True))")
    segments = (psp.cu_seqlens_q[1:] - psp.cu_seqlens_q[:-1]).tolist()
    processed = sum(segments)
    tokens = batch.num_real_tokens
    mfu = model_flops(cfg.model, tokens, batch.sum_sq_lengths) / elapsed / (PEAK_BF16_TFLOPS * 1e12)
    peak_gb = peak_mem_bytes / 2**30
    layout = Layout(
        sequence_parallel=cfg.parallel.sequence_parallel,
        recompute=cfg.model.recompute_granularity or "none",
        micro_batch_tokens=processed,
        num_micro_batches=1,
        fp8=cfg.model.fp8 is not None,
    )
    record = measurement_record(
        cfg.model,
        layout,
        attended_length(segments),
        processed / elapsed,
        gpu=gpu_spec(gpu_name),
        gpu_name=gpu_name,
        mfu=mfu,
        peak_memory_gb=peak_gb,
    )
    return {
        "tokens": tokens,
        "tokens_per_s": tokens / elapsed,
        "mfu": mfu,
        "peak_mem_gb": peak_gb,
        "host_syncs": host_syncs,
        "measurement": record,
    }


def _one_step(overrides: list[str], seq_length: int, pair_tokens: int, sync_debug: bool = False) -> dict:
    """Build model + DDP + optimizer as training does; time one packed THD step after a warm-up."""
    import warnings

    import torch

    from megatron_polar.config import load_config
    from megatron_polar.data.batching import collate_packed
    from megatron_polar.model.builder import build_model_chunks
    from megatron_polar.parallel import topology
    from megatron_polar.training.forward_step import forward_backward
    from megatron_polar.training.setup import build_optimizer, wrap_ddp

    cfg = load_config([*TINY_GPU, f"data.seq_length={seq_length}", *overrides])
    topo = topology.initialize(cfg.parallel, cfg.train.seed)
    model = wrap_ddp(cfg, build_model_chunks(cfg, use_te=True))
    optimizer = build_optimizer(cfg, model, 1e-5)
    pairs = _random_rows(seq_length, pair_tokens, min(cfg.model.vocab_size, 30000), 0)
    batch = collate_packed([pairs], seq_length, thd=True)

    def step():
        for m in model:
            m.zero_grad_buffer()
        optimizer.zero_grad()
        forward_backward(model, [batch], topo.device)
        optimizer.step()

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    syncs = 0
    t0 = time.perf_counter()
    if sync_debug:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            step()
            torch.cuda.set_sync_debug_mode(0)
        syncs = sum("synchroniz" in str(w.message) for w in caught)
    else:
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = step_figures(
        cfg, batch, elapsed, torch.cuda.max_memory_allocated(), torch.cuda.get_device_name(), syncs
    )
    topology.destroy()
    return out


def check_thd_sync() -> dict:
    out = _one_step([], 2048, 200, sync_debug=True)
    out.pop("measurement")  # a tiny model under sync debugging: no step to calibrate on
    return out


ONE_B = [
    "model.num_layers=16",
    "model.hidden_size=2048",
    "model.num_attention_heads=16",
    "model.num_query_groups=8",
    "model.ffn_hidden_size=5632",
    "model.vocab_size=92544",
    "model.max_position_embeddings=32768",
]


def check_shape_1b() -> dict:
    out = {}
    for seq in (8192, 32768):
        measured = _one_step(ONE_B, seq, 1000)
        plan = subprocess.run(
            [
                sys.executable,
                "-m",
                "megatron_polar.plan",
                "--gpus",
                "1",
                "--json",
                *ONE_B,
                f"data.seq_length={seq}",
                "train.precision=bf16",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        predicted = (
            json.loads(plan.stdout)
            if plan.returncode in (0, 3) and plan.stdout.strip()
            else {"error": plan.stderr[-500:]}
        )
        out.setdefault("measurements", []).append(measured.pop("measurement"))
        out[f"seq{seq}"] = {"measured": measured, "plan": predicted}
    return out


def check_local_to_te() -> dict:
    from tests.gpu.workers import local_checkpoint_into_te
    from tests.support.launcher import run_distributed

    with tempfile.TemporaryDirectory() as tmp:
        [res] = run_distributed(local_checkpoint_into_te, 1, str(Path(tmp) / "ckpt"))
    diff = float((res["transformer_engine"] - res["local"]).abs().max())
    if diff > 1e-3:
        raise AssertionError(f"max score difference {diff}")
    return {"max_abs_diff": diff}


def check_pytest_gpu() -> dict:
    res = subprocess.run(
        # tests/gpu only: collecting the whole suite imports modules that need the dev extra
        # (transformers), which the container does not have.
        [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = res.stdout.strip().splitlines()[-1:] or [""]
    if res.returncode:
        raise AssertionError(res.stdout[-3000:])
    return {"summary": tail[0]}


CHECKS: dict[str, tuple[Callable[[], dict], int]] = {  # name -> (function, time limit in seconds)
    "versions": (check_versions, 180),
    "launcher_env": (check_launcher_env, 300),
    "resume": (check_resume, 600),
    "fp16": (check_fp16, 300),
    "fp8": (check_fp8, 300),
    "thd_sync": (check_thd_sync, 300),
    "shape_1b": (check_shape_1b, 600),
    "local_to_te": (check_local_to_te, 300),
    "pytest_gpu": (check_pytest_gpu, 900),
}


# ------------------------------------------------------------------------------------------ harness
def run_isolated(name: str, limit: float, python: str = sys.executable) -> dict:
    """Run one check in a subprocess; return {name, status (ok|failed|timeout), seconds, figures|error}."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [python, str(Path(__file__).resolve()), "--run-check", name, "--result", str(result)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {
                "name": name,
                "status": "timeout",
                "seconds": round(time.monotonic() - t0, 1),
                "error": f"no result after {limit:.0f} s",
            }
        seconds = round(time.monotonic() - t0, 1)
        if result.is_file():
            return {"name": name, "seconds": seconds, **json.loads(result.read_text())}
        return {
            "name": name,
            "status": "failed",
            "seconds": seconds,
            "error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}",
        }


def _run_one(name: str, result: Path) -> int:
    import traceback

    try:
        payload = {"status": "ok", "figures": CHECKS[name][0]()}
    except BaseException as exc:  # noqa: BLE001 - recorded, the harness moves on
        payload = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}"[-3000:],
            "traceback": traceback.format_exc()[-4000:],
        }
    result.write_text(json.dumps(payload, default=str))
    return 0 if payload["status"] == "ok" else 1


def _summary(figures: dict | None, width: int = 70) -> str:
    if not figures:
        return ""
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(results: list[dict]) -> str:
    """One line per check: name, status, seconds and its figures (or its error), in a fixed-width table."""
    rows = [("check", "status", "s", "figures / error")]
    for r in results:
        detail = (
            _summary(r.get("figures")) if r["status"] == "ok" else str(r.get("error", "")).splitlines()[-1:]
        )
        rows.append(
            (
                r["name"],
                r["status"],
                f"{r['seconds']:.0f}",
                detail if isinstance(detail, str) else "".join(detail)[:70],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def write_json_atomic(path: Path, obj: dict) -> None:
    from megatron_polar.utils.io import write_json_atomic as write

    write(path, obj, default=str, newline=False)


def build_report(results: list[dict]) -> dict:
    """The JSON report: every check's result, and at the top level the measured steps in the format
    ``python -m megatron_polar.plan --calibrate gpu_smoke.json`` reads (``{"measurements": [...]}``)."""
    measurements = [
        m
        for r in results
        if r.get("status") == "ok"
        for m in (r.get("figures") or {}).get("measurements", [])
    ]
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checks": results,
        "measurements": measurements,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="gpu_smoke.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument(
        "--checks", default=",".join(CHECKS), help="comma-separated subset of: " + ", ".join(CHECKS)
    )
    ap.add_argument("--out", default="gpu_smoke.json", help="JSON report (written atomically)")
    ap.add_argument("--run-check", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.run_check:
        return _run_one(args.run_check, Path(args.result))
    names = [n.strip() for n in args.checks.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {unknown}; choose from {list(CHECKS)}")
    results = []
    for name in names:
        results.append(run_isolated(name, CHECKS[name][1]))
        print(f"[gpu-smoke] {name}: {results[-1]['status']} ({results[-1]['seconds']:.0f} s)", flush=True)
    print(format_table(results))
    write_json_atomic(Path(args.out), build_report(results))
    print(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
