"""Benchmark training throughput: packed rows against padded rows, same data, same run.

Builds one pair dataset whose length mix is the released recipe's scaled down 16x for the tiny model
(prompts 1-64 words instead of 1-1024 tokens, responses log-uniform up to 256 words instead of 4096
tokens, rows of 2048 tokens instead of 32768) and trains
the tiny preset on the CPU backend twice: ``data.layout=packed`` (whole pairs bin-packed into rows of
``data.seq_length``, block-diagonal attention) and ``data.layout=padded`` (one sequence per row, padded to
``data.seq_length``). Both report *real* (non-padding) tokens per second from ``metrics.jsonl``; the
ratio packed/padded is the figure quoted in the README. Run: ``python benchmarks/bench_train.py``.
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_polar.data.tokenizer import train_sentencepiece  # noqa: E402

SEQ_LENGTH = 2048
STEPS = 6
ROUNDS = 2  # packed and padded alternate, best round kept: other load on the machine hits both alike
WARMUP_STEPS = 2  # excluded from the mean: first steps pay one-off allocation costs


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")


WORDS = [f"w{i}" for i in range(150)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_corpus(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)

    def response() -> str:
        return _text(rng, int(math.exp(rng.uniform(math.log(4), math.log(256)))))

    with open(path, "w", encoding="utf-8") as f:
        for _ in range(rows):
            row = {
                "prompt": _text(rng, rng.randint(1, 64)),
                "reference": response(),
                "chosen": response(),
                "rejected": response(),
            }
            f.write(json.dumps({k: [{"role": "user", "content": v}] for k, v in row.items()}) + "\n")


def build_dataset(tmp: Path, rows: int = 800) -> str:
    corpus = tmp / "pairs.jsonl"
    write_corpus(corpus, rows)
    tok = train_sentencepiece([" ".join(WORDS)] * 50, tmp / "tok", vocab_size=480)
    prefix = str(tmp / "train")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "data_tools",
            "build",
            str(corpus),
            "-o",
            prefix,
            "--tokenizer",
            tok,
            "--max-length",
            str(SEQ_LENGTH // 2),
            "--max-response-length",
            str(SEQ_LENGTH // 4 - 4),
            "--workers",
            "2",
            "--no-progress",
        ],
        check=True,
        env=_env(),
        capture_output=True,
    )
    return prefix


def train_command(
    prefix: str, run_dir: Path, *, layout: str, share_prefix: bool, rows: int, steps: int, extra=()
) -> list[str]:
    """The ``megatron_polar.train`` command every training benchmark times: tiny model, fp32, no eval or saves."""
    return [
        sys.executable,
        "-m",
        "megatron_polar.train",
        f"data.train=[{{path: {prefix}}}]",
        f"data.seq_length={SEQ_LENGTH}",
        f"data.layout={layout}",
        f"data.share_prefix={str(share_prefix).lower()}",
        f"train.global_batch_size={rows}",
        "train.micro_batch_size=1",
        f"train.train_iters={steps}",
        "train.eval_interval=0",
        "train.precision=fp32",
        "checkpoint.save_interval=0",
        "checkpoint.save_optimizer=false",
        f"logging.run_dir={run_dir}",
        "logging.tensorboard=false",
        "logging.log_interval=1000",
        f"model.max_position_embeddings={SEQ_LENGTH}",
        *extra,
    ]


def run_layout(prefix: str, layout: str, run_dir: Path) -> dict:
    # Same rows per step: padded 2 pairs = 4 rows, packed 4 rows of several pairs each.
    batch = 2 if layout == "padded" else 4
    # share_prefix=false: today's rows; bench_shared measures shared-prefix rows.
    cmd = train_command(prefix, run_dir, layout=layout, share_prefix=False, rows=batch, steps=STEPS)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, capture_output=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == "train"][WARMUP_STEPS:]
    return {
        "real_tokens_per_s": round(statistics.mean(r["tokens_per_s"] for r in rows), 1),
        "pairs_per_step": statistics.mean(r["pairs"] for r in rows),
        "step_time_s": round(statistics.mean(r["step_time_s"] for r in rows), 3),
        "wall_s": round(time.monotonic() - t0, 1),
    }


def main() -> dict:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        tmp = Path(tmp)
        prefix = build_dataset(tmp)
        manifest = json.loads(Path(prefix + ".manifest.json").read_text())
        runs = {"packed": [], "padded": []}
        for r in range(ROUNDS):
            for layout in runs:
                runs[layout].append(run_layout(prefix, layout, tmp / f"{layout}{r}"))
        packed, padded = (max(runs[k], key=lambda x: x["real_tokens_per_s"]) for k in ("packed", "padded"))
    ratio = packed["real_tokens_per_s"] / padded["real_tokens_per_s"]
    result = {
        "benchmark": "bench_train",
        "model": "tiny preset (4 layers, hidden 64), fp32, CPU/gloo, 1 process",
        "seq_length": SEQ_LENGTH,
        "mean_pair_tokens": manifest.get("tokens", {}).get("mean_pair"),
        "packed": packed,
        "padded": padded,
        "packed_over_padded": round(ratio, 2),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(f"training throughput, real tokens/s (tiny model, seq {SEQ_LENGTH}, CPU):")
    print(f"  packed {packed['real_tokens_per_s']:>10.0f}   ({packed['pairs_per_step']:.1f} pairs/step)")
    print(f"  padded {padded['real_tokens_per_s']:>10.0f}   ({padded['pairs_per_step']:.1f} pairs/step)")
    print(f"  packed / padded = {ratio:.2f}x")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
