"""tokenizer.json built from a sentencepiece model: same ids as sentencepiece, refused where it cannot be."""

from __future__ import annotations

import random

import pytest

from megatron_polar.checkpoint.hf_fast_tokenizer import build_fast_tokenizer, read_sentencepiece_model
from megatron_polar.checkpoint.hf_io import ConversionError
from megatron_polar.data.tokenizer import train_sentencepiece
from tests.support import hf_fixtures as fx

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "def f(x):\n    return x * 2\n\n",
    "中文句子，还有标点。",
    "numbers 12345 and   spaces\tand tabs",
] * 40
ALPHABET = list("abcdefghij xyz\n\n\t\r  ,.:;()[]<>|_0123456789你好世界。é😀") + ["<|reward|>", "\n\n"]


def _random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 80))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return train_sentencepiece(CORPUS, tmp_path_factory.mktemp("sp") / "bpe", vocab_size=420)


def test_fast_tokenizer_gives_sentencepiece_ids_on_random_text(tiny_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tiny_model)
    fast = build_fast_tokenizer(tiny_model, renamed={}, special_ids=set(), add_bos=False)
    texts = _random_texts(400, seed=0) + CORPUS[:4]
    mismatched = [t for t in texts if fast.encode(t).ids != sp.encode(t)]
    assert not mismatched, mismatched[:3]
    # Byte fallback really happens (characters outside the tiny vocabulary), and decoding inverts it.
    assert any(sp.is_byte(i) for i in sp.encode("😀"))
    assert fast.decode(fast.encode("a 😀\n\tb").ids) == "a 😀\n\tb"


def test_released_tokenizer_matches_sentencepiece_and_renames_the_split_token():
    import sentencepiece as spm

    model = fx.POLAR_TOKENIZER / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    fast = build_fast_tokenizer(model, {fx.POLAR_SPLIT_ID: "<|reward|>"}, {fx.POLAR_SPLIT_ID}, add_bos=True)
    assert fast.token_to_id("<|reward|>") == fx.POLAR_SPLIT_ID
    assert fast.token_to_id("[UNUSED_TOKEN_130]") == fx.POLAR_REWARD_ID  # user-defined: matched whole
    for text in _random_texts(150, seed=1):
        pieces = text.split("<|reward|>")
        want = [1] + sp.encode(pieces[0])
        for piece in pieces[1:]:
            want += [fx.POLAR_SPLIT_ID] + sp.encode(piece)
        assert fast.encode(text).ids == want, text


def test_model_file_fields_are_read():
    sp = read_sentencepiece_model(fx.POLAR_TOKENIZER / "tokenizer.model")
    assert len(sp.pieces) == fx.POLAR_VOCAB and sp.byte_fallback and not sp.add_dummy_prefix
    assert sp.normalizer_name == "identity" and sp.pieces[fx.POLAR_SPLIT_ID] == "[UNUSED_TOKEN_0]"


def test_unigram_and_normalising_models_are_refused(tmp_path):
    import sentencepiece as spm

    unigram = train_sentencepiece(CORPUS, tmp_path / "uni", vocab_size=420, model_type="unigram")
    with pytest.raises(ConversionError, match="not BPE"):
        build_fast_tokenizer(unigram, {}, set(), add_bos=False)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_prefix=str(tmp_path / "nfkc"),
        vocab_size=420,
        hard_vocab_limit=False,
        model_type="bpe",
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    with pytest.raises(ConversionError, match="nmt_nfkc"):
        build_fast_tokenizer(tmp_path / "nfkc.model", {}, set(), add_bos=False)
    (tmp_path / "junk.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ConversionError, match="junk.model"):
        read_sentencepiece_model(tmp_path / "junk.model")
