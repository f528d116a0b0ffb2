"""Fixtures for the data-contract tests: a tiny sentencepiece tokenizer trained on the fly."""

from __future__ import annotations

import random

import pytest

from megatron_polar.data.tokenizer import load_tokenizer, train_sentencepiece

WORDS = ["alpha", "beta", "gamma", "reward", "model", "policy", "the", "of", "和", "数据", "é", "\n", "  "]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic sentences for training a tiny tokenizer."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(n)]


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> str:
    """Path of a tiny sentencepiece model with the POLAR special tokens registered."""
    return train_sentencepiece(corpus(), tmp_path_factory.mktemp("tok") / "tiny", vocab_size=300)


@pytest.fixture(scope="session")
def sp_tok(sp_model):
    """The tiny sentencepiece model, loaded."""
    return load_tokenizer(sp_model)
