"""Builders shared by the scoring and integration tests and the serving benchmark: tiny tokenizer,
checkpoint, texts, and the session fixtures built from them."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = (
    "the a reward model scores answers against references quickly slowly good bad helpful honest "
    "question answer python code math proof step list sum because therefore however maybe yes no "
    "cat dog tree river mountain city data model train test value error"
).split()


def random_text(rng: random.Random, lo: int = 3, hi: int = 30) -> str:
    """A sentence of ``lo..hi`` words from a small vocabulary."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def make_tokenizer(prefix: str | Path, vocab_size: int = 300) -> str:
    """Train a tiny sentencepiece model with the POLAR special tokens; returns its path."""
    from megatron_polar.data.tokenizer import train_sentencepiece

    rng = random.Random(0)
    texts = [random_text(rng) for _ in range(400)] + ["Hello, world! 123 {}[]()"]
    return train_sentencepiece(texts, str(prefix), vocab_size)


def make_checkpoint(root: str | Path, seed: int = 0, num_layers: int = 2) -> str:
    """Save a tiny model (random, non-zero reward head) as a megatron_polar checkpoint; returns the root."""
    import torch

    from megatron_polar.checkpoint import manager
    from megatron_polar.config import load_config, to_yaml
    from megatron_polar.model.standalone import build_single

    cfg = load_config(["train.precision=fp32", f"model.num_layers={num_layers}", f"train.seed={seed}"])
    model = build_single(cfg, "cpu")
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        model.reward_head.weight.copy_(torch.randn(model.reward_head.weight.shape, generator=gen))
    manager.save(root, 1, [model], config_yaml=to_yaml(cfg))
    return str(root)


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> str:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def scorer(checkpoint_path, tokenizer_path):
    import torch

    from megatron_polar.scoring.scorer import PolarScorer

    torch.manual_seed(0)
    return PolarScorer.from_checkpoint(checkpoint_path, tokenizer_path, device="cpu", batch_tokens=4096)
