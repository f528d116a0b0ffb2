"""Load test of the reward server: dynamic batching against one-at-a-time scoring, same server and model.

A tiny model and tokenizer are built in a temporary directory; a server on loopback answers 8
concurrent keep-alive clients sending 2,000 ``/score`` requests in total (one prompt, one reference, one
candidate each), first with dynamic batching (``--max-batch 64``) and then with ``--max-batch 1``.
Reports throughput, p50/p99 latency and failures for both and the batched / one-at-a-time throughput
ratio. Bounded: each phase stops at its request count or its time limit, whichever comes first.

    PYTHONPATH=. python benchmarks/bench_serve.py
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
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
PHASE_LIMIT_S = 40.0
MAX_BATCH = 64
MAX_WAIT_MS = 5.0


def _payloads(n: int, seed: int = 0) -> list[bytes]:
    from tests.scoring.helpers import random_text

    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "prompt": random_text(rng, 2, 5),
                "reference": random_text(rng, 2, 5),
                "candidates": [random_text(rng, 2, 6)],
            }
        ).encode()
        for _ in range(n)
    ]


def _load(url_host: str, port: int, payloads: list[bytes], deadline: float) -> dict:
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
                ok = resp.status == 200 and len(json.loads(body)["rewards"]) == 1
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
        "p50_ms": round(1000 * statistics.median(lat), 2) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
    }


def _phase(scorer, max_batch: int, payloads: list[bytes]) -> dict:
    from megatron_polar.scoring.server import build_server

    server = build_server(scorer, "127.0.0.1", 0, max_batch=max_batch, max_wait_ms=MAX_WAIT_MS)
    server.start_background()
    try:
        host, port = server.server_address[:2]
        result = _load(host, port, payloads, time.monotonic() + PHASE_LIMIT_S)
        result["batches"] = server.service.batcher.batches
        result["mean_batch"] = round(
            server.service.batcher.sequences / max(1, server.service.batcher.batches), 2
        )
    finally:
        server.stop()
    result["max_batch"] = max_batch
    return result


def main() -> dict:
    """Run both phases and return the figures (also printed as JSON by ``__main__``)."""
    import importlib.util

    if importlib.util.find_spec("megatron_polar.data.format") is None:  # until the data branch is merged
        from tests.scoring import standin_data

        standin_data.install()
    import torch

    from megatron_polar.scoring.scorer import PolarScorer
    from tests.scoring.helpers import make_checkpoint, make_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        tok = make_tokenizer(Path(tmp) / "tok")
        ckpt = make_checkpoint(Path(tmp) / "ckpt")
        scorer = PolarScorer.from_checkpoint(ckpt, tok, device="auto", max_batch_sequences=MAX_BATCH)
        payloads = _payloads(REQUESTS)
        _phase(scorer, MAX_BATCH, payloads[:64])  # warm-up (allocator, kernels)
        batched = _phase(scorer, MAX_BATCH, payloads)
        single = _phase(scorer, 1, payloads)
    ratio = batched["throughput_rps"] / single["throughput_rps"] if single["throughput_rps"] else float("inf")
    return {
        "benchmark": "bench_serve",
        "clients": CLIENTS,
        "requests": REQUESTS,
        "device": str(scorer.device),
        "torch_threads": torch.get_num_threads(),
        "batched": batched,
        "one_at_a_time": single,
        "batched_over_one_at_a_time": round(ratio, 2),
        "target": "zero failures, ratio >= 3",
        "met": batched["failed"] == 0 and single["failed"] == 0 and ratio >= 3.0,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
