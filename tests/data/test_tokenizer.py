"""load_tokenizer / train_sentencepiece: special ids, round trips, both tokenizer kinds."""

from __future__ import annotations

import pickle

import pytest

from megatron_polar.data.tokenizer import load_tokenizer
from tests.data_tools.test_tokenizer_hf import make_hf_tokenizer

TEXTS = ["", " leading", "two  spaces\n\n", "emoji 😀 and é 数据", "x<|reward|>y", "\ttab"]


def test_sentencepiece_specials_and_round_trip(sp_tok):
    assert sp_tok.kind == "sentencepiece" and sp_tok.bos_id == 1
    assert sp_tok.encode("<|reward|>") == [sp_tok.split_token_id]
    assert sp_tok.encode("[UNUSED_TOKEN_130]") == [sp_tok.reward_token_id]
    for t in TEXTS:
        assert sp_tok.decode(sp_tok.encode(t)) == t
    # Segment-wise encodings concatenate without a dummy-prefix space.
    assert sp_tok.decode(sp_tok.encode("ab") + sp_tok.encode(" cd")) == "ab cd"
    assert len(sp_tok.sha256) == 64 and sp_tok.vocab_size >= 260


def test_missing_special_token_is_a_clear_error(sp_model):
    with pytest.raises(ValueError, match="<nope>"):
        load_tokenizer(sp_model, split_token="<nope>")
    tok = load_tokenizer(sp_model, split_token_id=5, reward_token_id=6)
    assert (tok.split_token_id, tok.reward_token_id, tok.split_token) == (5, 6, None)
    with pytest.raises(ValueError, match="outside"):
        load_tokenizer(sp_model, reward_token_id=10**6)


def test_pickles_by_path(sp_tok):
    again = pickle.loads(pickle.dumps(sp_tok))
    assert again.encode("alpha beta") == sp_tok.encode("alpha beta")
    assert again.reward_token_id == sp_tok.reward_token_id


def test_hf_tokenizer(tmp_path):
    tok = load_tokenizer(make_hf_tokenizer(tmp_path))
    assert tok.kind == "hf" and tok.bos_id == tok.token_to_id("<s>")
    assert tok.encode("<|reward|>") == [tok.split_token_id]
    for t in TEXTS:
        assert tok.decode(tok.encode(t)) == t
    assert load_tokenizer(tmp_path).path == tok.path  # a directory holding tokenizer.json
