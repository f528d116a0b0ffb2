"""Load test of the reward server: dynamic batching against one-at-a-time scoring, same server and model.

A tiny model and tokenizer are built in a temporary directory; a server on loopback answers 8
concurrent keep-alive clients sending 2,000 ``/score`` requests in total, first with dynamic batching
(``--max-batch 64``) and then with ``--max-batch 1`` (the same server scoring one sequence per forward
pass). Each request holds one prompt, one reference and ``k`` candidates; the benchmark runs every ``k``
in ``BENCH_CANDIDATES`` (default ``1,4``): ``k=1`` is one rollout per request (the worst case for
batching: at most 8 sequences are in flight), ``k=4`` is the shape an RL trainer sends (a GRPO group or
OpenRLHF's micro-batch of rollouts per request). Reports throughput (requests/s and sequences/s),
p50/p99 latency and failures for both modes and the batched / one-at-a-time throughput ratio per shape.
Bounded: each phase stops at its request count or its time limit, whichever comes first.

    PYTHONPATH=. python benchmarks/bench_serve.py
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLIENTS = 8
REQUESTS = 2000
PHASE_LIMIT_S = 120.0
SHAPES = [int(k) for k in os.environ.get("BENCH_CANDIDATES", "1,4").split(",")]  # candidates per request
MAX_BATCH = 64
MAX_WAIT_MS = 5.0
THREADS = int(os.environ.get("BENCH_TORCH_THREADS", "0"))  # server intra-op threads (0: the serve default)
LAYERS = 4  # the tiny preset's depth
WARMUP = 64
STARTUP_LIMIT_S = 60.0


def _payloads(n: int, candidates: int, seed: int = 0) -> list[bytes]:
    from tests.support.scoring import random_text

    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "prompt": random_text(rng, 2, 5),
                "reference": random_text(rng, 2, 5),
                "candidates": [random_text(rng, 2, 6) for _ in range(candidates)],
            }
        ).encode()
        for _ in range(n)
    ]


def _load(url_host: str, port: int, payloads: list[bytes], deadline: float, candidates: int) -> dict:
    """Send ``payloads`` from CLIENTS threads (each its own keep-alive connection); collect latencies."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    next_index = [0]

    def client() -> None:
        conn = http.client.HTTPConnection(url_host, port, timeout=30)
        mine: list[float] = []
        failed = 0
        while time.monotonic() < deadline:
            with lock:
                i = next_index[0]
                next_index[0] += 1
            if i >= len(payloads):
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/score", body=payloads[i], headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and len(json.loads(body)["rewards"]) == candidates
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection(url_host, port, timeout=30)
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                failed += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            failures[0] += failed

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests": len(lat) + failures[0],
        "completed": len(lat),
        "failed": failures[0],
        "unsent": max(0, len(payloads) - next_index[0]),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(lat) / wall, 1) if wall else 0.0,
        "sequences_per_s": round(candidates * len(lat) / wall, 1) if wall else 0.0,
        "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
    }


def _start_server(ckpt: str, tok: str, max_batch: int, threads: int) -> tuple[subprocess.Popen, str, int]:
    """The serve CLI in its own process (its own GIL, as in production); returns (process, host, port)."""
    args = ["--model", ckpt, "--tokenizer", tok, "--port", "0", "--log-level", "WARNING"]
    args += ["--max-batch", str(max_batch), "--max-wait-ms", str(MAX_WAIT_MS)]
    if threads:
        args += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "megatron_polar.serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on"):
            host, port = line.split()[-1].removeprefix("http://").rsplit(":", 1)
            return proc, host, int(port)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the reward server did not start")


def _health(host: str, port: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _phase(ckpt: str, tok: str, max_batch: int, payloads: list[bytes], threads: int, k: int) -> dict:
    proc, host, port = _start_server(ckpt, tok, max_batch, threads)
    try:
        _load(host, port, payloads[:WARMUP], time.monotonic() + PHASE_LIMIT_S, k)  # allocator, first shapes
        before = _health(host, port)
        result = _load(host, port, payloads, time.monotonic() + PHASE_LIMIT_S, k)
        after = _health(host, port)
        batches = after["batches"] - before["batches"]
        result["batches"] = batches
        result["mean_batch"] = round((after["sequences"] - before["sequences"]) / max(1, batches), 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            result_rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            result_rc = proc.wait(timeout=10)
    result["max_batch"] = max_batch
    result["server_exit_code"] = result_rc
    return result


def main() -> dict:
    """Run both phases and return the figures (also printed as JSON by ``__main__``)."""
    from tests.support.scoring import make_checkpoint, make_tokenizer

    t0 = time.monotonic()
    shapes = {}
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tok = make_tokenizer(Path(tmp) / "tok")
        ckpt = make_checkpoint(Path(tmp) / "ckpt", num_layers=LAYERS)
        for k in SHAPES:
            payloads = _payloads(REQUESTS, k)
            batched = _phase(ckpt, tok, MAX_BATCH, payloads, THREADS, k)
            single = _phase(ckpt, tok, 1, payloads, THREADS, k)
            ratio = batched["throughput_rps"] / single["throughput_rps"] if single["throughput_rps"] else 0.0
            shapes[f"{k}_candidates_per_request"] = {
                "batched": batched,
                "one_at_a_time": single,
                "batched_over_one_at_a_time": round(ratio, 2),
                "failed": batched["failed"] + single["failed"] + batched["unsent"] + single["unsent"],
            }
    return {
        "benchmark": "bench_serve",
        "model": f"tiny preset, {LAYERS} layers, " + ("GPU" if _gpu() else "fp32, CPU"),
        "clients": CLIENTS,
        "requests": REQUESTS,
        "server_torch_threads": THREADS or "default",
        **shapes,
        "target": "zero failures, ratio >= 3",
        "met": {
            name: r["failed"] == 0 and r["batched_over_one_at_a_time"] >= 3.0 for name, r in shapes.items()
        },
        "wall_s": round(time.monotonic() - t0, 1),
    }


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
