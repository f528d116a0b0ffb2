"""``make bench``: every benchmark, each printing ratios against a baseline measured in the same run.

* bench_build: ``data_tools build`` tokens/s with 1 and 2 workers over the raw single-core encode rate.
* bench_train: training real tokens/s, packed rows over padded rows, same data.
* bench_shared: training real pairs/s, shared-prefix rows over packed rows, same data; FLOPs ratio beside.
* bench_serve: reward-server throughput, dynamic batching over one-at-a-time, 8 clients x 2,000 requests.
* bench_scale: one rank's start-up seconds and plan memory at 1M/10M/50M pairs, projected to 351M.
* bench_save_memory: projected checkpoint-save host memory per rank, 7B at TP2 x DP456, before and after.

Writes the figures to ``benchmarks/results.json`` (ignored by git) and a summary table to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _summary(results: dict) -> list[tuple[str, str, str]]:
    rows = []
    b = results.get("bench_build", {})
    for workers, target in ((1, 0.8), (2, 1.6)):
        if f"workers_{workers}" in b:
            ratio = b[f"workers_{workers}"]["ratio_vs_raw"]
            rows.append(
                (f"build tokens/s, {workers} worker(s) / raw encode", f"{ratio:.2f}x", f">= {target}x")
            )
    if "memory" in b:
        m = b["memory"]
        rows.append(
            (
                f"build worker peak RSS MB, {m['small']['rows']} vs {m['large']['rows']} rows",
                f"{m['small']['worker_peak_rss_mb']:.0f} / {m['large']['worker_peak_rss_mb']:.0f}",
                "flat",
            )
        )
    if "sharded" in b:
        sh = b["sharded"]
        rows.append(("build, 2 shards on 2 cores / 1 shard (wall clock)", f"{sh['speedup']:.2f}x", ">= 1.8x"))
        rows.append(("build, merged shards identical to 1 shard", str(sh["identical"]), "True"))
    m = results.get("bench_save_memory", {})
    if m:
        rows.append(
            (
                "save host GB/rank, 7B TP2 x DP456: fully_reshardable -> ours",
                f"{m['optimizer_before_bytes'] / 1e9:.1f} -> {m['optimizer_after_bytes'] / 1e9:.2f}",
                "<= 8",
            )
        )
    t = results.get("bench_train", {})
    if "packed_over_padded" in t:
        rows.append(("train real tokens/s, packed / padded", f"{t['packed_over_padded']:.2f}x", "(recorded)"))
    sh = results.get("bench_shared", {})
    if "shared_over_unshared_pairs_per_s" in sh:
        rows.append(
            (
                f"train pairs/s, shared-prefix / packed rows (FLOPs {sh['flops_ratio']:.2f}x)",
                f"{sh['shared_over_unshared_pairs_per_s']:.2f}x",
                f">= {sh['target']}x",
            )
        )
    s = results.get("bench_serve", {})
    for shape, r in s.items():
        if not isinstance(r, dict) or "batched_over_one_at_a_time" not in r:
            continue
        label = shape.replace("_", " ")
        rows.append(
            (
                f"serve seq/s, batched / one at a time ({label})",
                f"{r['batched_over_one_at_a_time']:.2f}x",
                ">= 3x",
            )
        )
        rows.append((f"serve failed requests ({label})", str(r["failed"]), "0"))
        b = r["batched"]
        rows.append((f"serve batched p50 / p99 ms ({label})", f"{b['p50_ms']} / {b['p99_ms']}", ""))
    sc = results.get("bench_scale", {}).get("verdict")
    if sc:
        rows.append(
            ("start-up @351M pairs, first start (plan build), cpu s", f"{sc['first_cpu_s']:.0f}", "<= 120")
        )
        rows.append(
            (
                "start-up @351M pairs, restart (writer checks plan), cpu s",
                f"{sc['restart_cpu_s']:.1f}",
                "<= 10",
            )
        )
        rows.append(
            ("start-up @351M pairs, other ranks (map plan), cpu s", f"{sc['reader_cpu_s']:.1f}", "<= 10")
        )
        rows.append(("plan memory per rank @351M pairs, GB", f"{sc['reader_extra_gb']:.2f}", "<= 1"))
        rows.append(("packing efficiency, 32k rows, paper mix", f"{sc['efficiency']:.4f}", ">= 0.99"))
    return rows


def main() -> int:
    from benchmarks import (
        bench_build,
        bench_save_memory,
        bench_scale,
        bench_serve,
        bench_shared,
        bench_train,
    )

    results, t0 = {}, time.monotonic()
    for name, module in (
        ("bench_build", bench_build),
        ("bench_train", bench_train),
        ("bench_shared", bench_shared),
        ("bench_serve", bench_serve),
        ("bench_scale", bench_scale),
        ("bench_save_memory", bench_save_memory),
    ):
        print(f"== {name}", flush=True)
        results[name] = module.main()
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n== summary ({time.monotonic() - t0:.0f}s, full figures in benchmarks/results.json)")
    for label, value, target in _summary(results):
        print(f"  {label:<62} {value:>14}   {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
