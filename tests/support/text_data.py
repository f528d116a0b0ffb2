"""Helpers for the data tests: small JSONL inputs written on the fly, and built datasets made to look old."""

from __future__ import annotations

import gzip
import json
import os
import random

WORDS = ["alpha", "beta", "gamma", "reward", "model", "policy", "the", "of", "和", "数据", "é", "\n"]


def words(rng: random.Random, n: int) -> str:
    """``n`` random words."""
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_jsonl(path, rows, *, compress: str | None = None) -> str:
    """Write rows (dicts, or raw ``bytes``/``str`` lines) to ``path``; ``compress`` is ``gz`` or ``zst``."""
    lines = []
    for row in rows:
        if isinstance(row, bytes):
            lines.append(row)
        elif isinstance(row, str):
            lines.append(row.encode("utf-8"))
        else:
            lines.append(json.dumps(row, ensure_ascii=False).encode("utf-8"))
    data = b"\n".join(lines) + b"\n"
    if compress == "gz":
        data = gzip.compress(data)
    elif compress == "zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def make_triples(n: int, seed: int = 0, long_every: int = 0) -> list[dict]:
    """Random triples mixing plain strings, message lists and the pretrain wrapper."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = 400 if long_every and i % long_every == 0 else 30
        row = {
            "prompt": [
                {"role": "system", "content": words(rng, 5)},
                {"role": "user", "content": words(rng, 20)},
            ],
            "reference": words(rng, rng.randint(1, length)),
            "chosen": [{"role": "assistant", "content": words(rng, rng.randint(1, length))}],
            "rejected": words(rng, rng.randint(1, length)),
        }
        if i % 5 == 0:
            row["wrapper"] = "pretrain"
        rows.append(row)
    return rows


def strip_prefix_sidecar(prefix: str) -> None:
    """Make the built dataset ``prefix`` look like one built before the shared-prefix sidecar existed."""
    from megatron_polar.data.pair_dataset import manifest_path, prefix_lengths_path

    os.remove(prefix_lengths_path(prefix))
    path = manifest_path(prefix)
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    del manifest["prefix_lengths"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
