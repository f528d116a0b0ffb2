"""Fixtures for the scoring tests: a tiny sentencepiece tokenizer, a tiny checkpoint and a scorer."""

from __future__ import annotations

import pytest
import torch

from tests.scoring.helpers import make_checkpoint, make_tokenizer


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> str:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def scorer(checkpoint_path, tokenizer_path):
    from megatron_polar.scoring.scorer import PolarScorer

    torch.manual_seed(0)
    return PolarScorer.from_checkpoint(checkpoint_path, tokenizer_path, device="cpu", batch_tokens=4096)
