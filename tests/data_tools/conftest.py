"""Fixtures for the data_tools tests: a tiny sentencepiece tokenizer trained on the fly."""

from __future__ import annotations

import random

import pytest

from megatron_polar.data.tokenizer import load_tokenizer, train_sentencepiece
from tests.data_tools.dt_helpers import words


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> str:
    """A tiny sentencepiece model with ``<|reward|>`` and ``[UNUSED_TOKEN_130]`` registered."""
    rng = random.Random(0)
    return train_sentencepiece(
        [words(rng, 20) for _ in range(400)], tmp_path_factory.mktemp("tok") / "tiny", 300
    )


@pytest.fixture(scope="session")
def sp_tok(sp_model):
    """The tiny model, loaded."""
    return load_tokenizer(sp_model)
