"""Tiny tokenizers trained in the test session: a sentencepiece model (fixtures) and an HF ``tokenizer.json``.

The fixtures are imported by the conftest of every folder that needs them (data_tools, planning).
"""

from __future__ import annotations

import random

import pytest

from megatron_polar.data.tokenizer import load_tokenizer, train_sentencepiece
from tests.support.text_data import words


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


def make_hf_tokenizer(path) -> str:
    """A byte-level BPE ``tokenizer.json`` with ``<s>``, ``<|reward|>``, ``[UNUSED_TOKEN_130]`` added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<|reward|>", "[UNUSED_TOKEN_130]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["alpha beta gamma reward model policy 数据 é"] * 50, trainer)
    out = str(path / "tokenizer.json")
    tok.save(out)
    return out
