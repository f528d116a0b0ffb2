"""Benchmark ``python -m data_tools build``: throughput vs raw tokenizer speed, and memory vs input size.

Measures, on one synthetic corpus and one sentencepiece model trained here:

* raw: single-core ``tokenizer.encode_with_bos`` over exactly the texts the build measures (prompt,
  reference, chosen, rejected of each row), in tokens/s;
* build with 1 and 2 workers: tokens produced by ``encode`` per second of build time (JSON parsing,
  validation, the released decode and whole-string re-encode, shard writing and merging included), as a
  ratio to raw (about 0.35-0.42x per worker: the released algorithm tokenizes most text about 3 times);
  and the tokens written per second (prompt and reference appear in both sequences, so this is higher);
* peak RSS of the main process and of each worker for the 20k-row input and a 5x larger one;
* sharded build: the same input as 1 shard in one process vs 2 shards (``--num-shards 2``) in two
  concurrent single-worker processes, wall-clock throughput ratio (target >= 1.8x on 2 cores) with and
  without the ``merge`` step, and whether the merged ``.bin``/``.idx`` equal the 1-shard build's.

Builds run as subprocesses so each RSS figure is that build's own. Run: ``python benchmarks/bench_build.py``.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data_tools.sharding import shard_prefix  # noqa: E402
from megatron_polar.data.tokenizer import load_tokenizer, train_sentencepiece  # noqa: E402

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "an", "el", "is", "or", "um"]


def _vocab(rng: random.Random, n: int = 3000) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def _text(rng: random.Random, vocab: list[str], lo: int, hi: int) -> str:
    words = [rng.choice(vocab) for _ in range(rng.randint(lo, hi))]
    for i in range(12, len(words), 13):
        words[i] += rng.choice([".", ",", "\n"])
    return " ".join(words)


def write_corpus(path: str, rows: int, seed: int = 0) -> None:
    """Synthetic triples: prompts 5-150 words, responses 20-400 words."""
    rng = random.Random(seed)
    vocab = _vocab(random.Random(1))
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            row = {
                "prompt": [{"role": "user", "content": _text(rng, vocab, 5, 150)}],
                "reference": [{"role": "assistant", "content": _text(rng, vocab, 20, 400)}],
                "chosen": [{"role": "assistant", "content": _text(rng, vocab, 20, 400)}],
                "rejected": [{"role": "assistant", "content": _text(rng, vocab, 20, 400)}],
            }
            f.write(json.dumps(row) + "\n")


def raw_encode_rate(corpus: str, model: str) -> tuple[float, int]:
    """Single-core tokens/s of measuring (``encode_with_bos``) the four texts of each row a build reads."""
    tok = load_tokenizer(model)
    texts = []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            flat = {
                k: "\n".join(m["content"] for m in row[k])
                for k in ("prompt", "reference", "chosen", "rejected")
            }
            texts += [flat["prompt"], flat["reference"], flat["chosen"], flat["rejected"]]
    start = time.perf_counter()
    tokens = sum(len(tok.encode_with_bos(t)) for t in texts)
    return tokens / (time.perf_counter() - start), tokens


def _build_cmd(corpus: str, model: str, prefix: str, workers: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-W",
        "ignore",
        "-m",
        "data_tools",
        "--log-level",
        "WARNING",
        "build",
        corpus,
        "-o",
        prefix,
        "--tokenizer",
        model,
        "--workers",
        str(workers),
        "--no-progress",
        "--overwrite",
        *extra,
    ]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_build(corpus: str, model: str, prefix: str, workers: int) -> dict:
    """One build in a fresh process; returns its manifest."""
    cmd = _build_cmd(corpus, model, prefix, workers)
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)
    with open(prefix + ".manifest.json", encoding="utf-8") as f:
        return json.load(f)


def sharded_build(corpus: str, model: str, tmp: str, shards: int = 2) -> dict:
    """Wall-clock tokens/s of 1 shard in one process vs ``shards`` concurrent single-worker shard
    processes (plus the merge), on the same input; and whether the merged files are identical."""
    one = os.path.join(tmp, "shard-base")
    start = time.perf_counter()
    base_build = run_build(corpus, model, one, 1)["build"]
    tokens = base_build["encoded_tokens"]
    base_s = time.perf_counter() - start
    prefix = os.path.join(tmp, "sharded")
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            _build_cmd(corpus, model, prefix, 1, "--num-shards", str(shards), "--shard-index", str(i)),
            env=_env(),
            stdout=subprocess.DEVNULL,
        )
        for i in range(shards)
    ]
    if any(p.wait() for p in procs):
        raise RuntimeError("a shard build failed")
    shards_s = time.perf_counter() - start
    # The builds' own seconds (from their manifests): without the interpreter's start-up and imports,
    # paid once per process (~0.4 s since data_tools stopped importing torch and megatron-core).
    shard_build_s = []
    for i in range(shards):
        with open(shard_prefix(prefix, i, shards) + ".manifest.json", encoding="utf-8") as f:
            shard_build_s.append(json.load(f)["build"]["seconds"])
    merge = [sys.executable, "-W", "ignore", "-m", "data_tools", "--log-level", "WARNING", "merge", "build"]
    subprocess.run(
        [*merge, "-o", prefix, "--num-shards", str(shards)], check=True, env=_env(), stdout=subprocess.DEVNULL
    )
    total_s = time.perf_counter() - start
    identical = all(
        open(one + ext, "rb").read() == open(prefix + ext, "rb").read() for ext in (".bin", ".idx")
    )
    return {
        "shards": shards,
        "encoded_tokens": tokens,
        "one_shard_seconds": base_s,
        "sharded_seconds": shards_s,
        "sharded_with_merge_seconds": total_s,
        "one_shard_tokens_per_s": tokens / base_s,
        "tokens_per_s_per_core": tokens / shards_s / shards,
        "speedup": base_s / shards_s,
        "speedup_with_merge": base_s / total_s,
        "build_seconds_one_shard": base_build["seconds"],
        "build_seconds_shards": shard_build_s,
        "speedup_build_only": base_build["seconds"] / max(shard_build_s),
        "one_shard_build_tokens_per_s": tokens / base_build["seconds"],
        "one_shard_written_tokens_per_s": base_build["tokens_per_s"],
        "identical": identical,
    }


def _build_figures(b: dict, raw_rate: float) -> dict:
    """The figures of one build, from its manifest's ``build`` section."""
    return {
        "seconds": b["seconds"],
        "encode_tokens_per_s": b["encoded_tokens"] / b["seconds"],
        "ratio_vs_raw": b["encoded_tokens"] / b["seconds"] / raw_rate,
        "written_tokens_per_s": b["tokens_per_s"],
        "main_peak_rss_mb": b["main_peak_rss_kb"] / 1024,
        "worker_peak_rss_mb": [k / 1024 for k in b["worker_peak_rss_kb"]],
    }


def main(rows: int = 20_000, tokenizer: str | None = None, memory: bool = True) -> dict:
    """Run the benchmark, print a table, return the figures.

    Args:
        rows: triples in the corpus (the memory comparison uses 5x as many).
        tokenizer: a tokenizer path to measure (e.g. ``tests/fixtures/polar7b-tokenizer``); ``None``
            trains a 4000-piece sentencepiece model on the synthetic text.
        memory: also run the memory-vs-input-size build on the 5x corpus.
    """
    small_rows, large_rows = rows, 5 * rows
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        small, large = os.path.join(tmp, "small.jsonl"), os.path.join(tmp, "large.jsonl")
        write_corpus(small, small_rows)
        if tokenizer is None:
            rng = random.Random(2)
            vocab = _vocab(random.Random(1))
            model = train_sentencepiece(
                [_text(rng, vocab, 10, 40) for _ in range(5000)], os.path.join(tmp, "tok"), 4000
            )
        else:
            model = tokenizer
        raw_rate, raw_tokens = raw_encode_rate(small, model)

        figures: dict = {
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "tokenizer": tokenizer or "4000-piece sentencepiece trained here",
            "rows": small_rows,
            "raw_encode_tokens_per_s": raw_rate,
        }
        for workers in (1, 2):
            b = run_build(small, model, os.path.join(tmp, f"w{workers}"), workers)["build"]
            assert b["encoded_tokens"] == raw_tokens, "build and raw baseline encoded different texts"
            figures[f"workers_{workers}"] = _build_figures(b, raw_rate)
        with open(os.path.join(tmp, "w1.bin"), "rb") as f1, open(os.path.join(tmp, "w2.bin"), "rb") as f2:
            figures["workers_1_2_identical_bin"] = f1.read() == f2.read()

        figures["sharded"] = sharded_build(small, model, tmp)
        figures["load_average_end"] = os.getloadavg()
        if not memory:
            _print_table(figures)
            return figures
        # Memory vs input size: the 2-worker build above, then the same on a 5x larger corpus.
        write_corpus(large, large_rows, seed=5)
        big = _build_figures(run_build(large, model, os.path.join(tmp, "mem-large"), 2)["build"], raw_rate)
        mem = {}
        for name, path, rows, r in (
            ("small", small, small_rows, figures["workers_2"]),
            ("large", large, large_rows, big),
        ):
            mem[name] = {
                "rows": rows,
                "input_mb": os.path.getsize(path) / 2**20,
                "seconds": r["seconds"],
                "main_peak_rss_mb": r["main_peak_rss_mb"],
                "worker_peak_rss_mb": max(r["worker_peak_rss_mb"]),
            }
        figures["memory"] = mem

    _print_table(figures)
    return figures


def _print_table(f: dict) -> None:
    _print_main(f)
    s = f["sharded"]
    print(
        f"sharded build: 1 shard {s['one_shard_seconds']:.1f}s, {s['shards']} shards {s['sharded_seconds']:.1f}s "
        f"(+merge {s['sharded_with_merge_seconds']:.1f}s): {s['speedup']:.2f}x ({s['speedup_with_merge']:.2f}x "
        f"with merge; target >= 1.8x), {s['tokens_per_s_per_core']:,.0f} encoded tokens/s per core, "
        f"merged identical: {s['identical']}"
    )
    print(
        f"  build time alone (manifests, no process start-up): 1 shard {s['build_seconds_one_shard']:.1f}s, "
        f"shards {', '.join(f'{x:.1f}' for x in s['build_seconds_shards'])}s: {s['speedup_build_only']:.2f}x; "
        f"load average {f['load_average'][0]:.1f} at start, {f['load_average_end'][0]:.1f} after the shards"
    )


def _print_main(f: dict) -> None:
    print(f"machine: {f['cpu_count']} CPUs; corpus {f['rows']} triples; tokenizer {f['tokenizer']}")
    print(f"raw single-core encode: {f['raw_encode_tokens_per_s']:,.0f} tokens/s")
    print(
        f"{'build':<12}{'seconds':>9}{'enc tok/s':>13}{'vs raw':>8}{'target':>8}{'written tok/s':>15}"
        f"{'main RSS MB':>13}{'worker RSS MB':>15}"
    )
    for w, target in ((1, 0.8), (2, 1.6)):
        r = f[f"workers_{w}"]
        workers_rss = ", ".join(f"{x:.0f}" for x in r["worker_peak_rss_mb"])
        print(
            f"{w} worker{'s' if w > 1 else '':<4}{r['seconds']:>9.2f}{r['encode_tokens_per_s']:>13,.0f}"
            f"{r['ratio_vs_raw']:>7.2f}x{target:>7.1f}x{r['written_tokens_per_s']:>15,.0f}"
            f"{r['main_peak_rss_mb']:>13.0f}{workers_rss:>15}"
        )
    print(f"workers 1 vs 2 .bin identical: {f['workers_1_2_identical_bin']}")
    print(
        f"{'memory (2 workers)':<20}{'rows':>9}{'input MB':>10}{'seconds':>9}{'main RSS MB':>13}{'worker RSS MB':>15}"
    )
    for name, m in f.get("memory", {}).items():
        print(
            f"{name:<20}{m['rows']:>9}{m['input_mb']:>10.0f}{m['seconds']:>9.1f}{m['main_peak_rss_mb']:>13.0f}"
            f"{m['worker_peak_rss_mb']:>15.0f}"
        )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="triples in the corpus")
    parser.add_argument("--tokenizer", default=None, help="tokenizer to measure (default: train a small one)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory build on 5x the rows")
    args = parser.parse_args()
    main(args.rows, args.tokenizer, not args.no_memory)
