"""A small learnable POLAR task built through the real data_tools CLI.

Each "policy" writes sentences from its own word list. A pair's reference and chosen answer come from
one policy and the rejected answer from another, so a model that compares the candidate with the
reference can learn it; a model that ignores the reference cannot beat chance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from data_tools.__main__ import main as data_tools_main
from megatron_polar.data.tokenizer import train_sentencepiece

POLICIES = {
    "alpha": "red green blue cyan pink gold".split(),
    "beta": "cat dog cow fox owl bee".split(),
    "gamma": "one two six ten nine four".split(),
    "delta": "sun moon star rain snow wind".split(),
}


def _sentence(rng: random.Random, words: list[str], n: int) -> str:
    return " ".join(rng.choice(words) for _ in range(n))


def make_triples(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    names = sorted(POLICIES)
    rows = []
    for i in range(n):
        a, b = rng.sample(names, 2)
        prompt = f"q{i % 7}: say something"
        msg = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "reference": msg(_sentence(rng, POLICIES[a], rng.randint(3, 6))),
                "chosen": msg(_sentence(rng, POLICIES[a], rng.randint(3, 6))),
                "rejected": msg(_sentence(rng, POLICIES[b], rng.randint(3, 6))),
            }
        )
    return rows


def build_task(root: Path, n_train: int = 256, n_valid: int = 64) -> dict[str, str]:
    """Write a tokenizer and train/valid datasets under ``root``; return their prefixes and paths."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = [" ".join(w) for w in POLICIES.values()] * 20 + [f"q{i}: say something" for i in range(7)] * 20
    tok = train_sentencepiece(corpus, root / "tok", vocab_size=320)
    out = {"tokenizer": tok}
    for split, n, seed in (("train", n_train, 1), ("valid", n_valid, 2)):
        path = root / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in make_triples(n, seed)))
        prefix = str(root / split)
        rc = data_tools_main(
            [
                "build",
                str(path),
                "-o",
                prefix,
                "--tokenizer",
                tok,
                "--workers",
                "1",
                "--no-progress",
                "--overwrite",
            ]
        )
        assert rc == 0
        out[split] = prefix
    return out
