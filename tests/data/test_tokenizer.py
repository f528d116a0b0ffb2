"""load_tokenizer / train_sentencepiece: special ids, round trips, both tokenizer kinds."""

from __future__ import annotations

import pickle

import pytest

from megatron_polar.data.tokenizer import load_tokenizer
from tests.support.tokenizers import make_hf_tokenizer

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


def _with_config(tmp_path, sp_model, config: dict):
    import json
    import shutil

    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path


def test_tokenizer_config_names_added_tokens_and_bos(tmp_path, sp_model, sp_tok):
    # Rename an ordinary piece, as POLAR-7B's configuration renames [UNUSED_TOKEN_0] to <|reward|>.
    piece = sp_tok.encode("alpha")[0]
    d = _with_config(
        tmp_path,
        sp_model,
        {
            "add_bos_token": False,
            "added_tokens_decoder": {
                str(piece): {"content": "<|mine|>", "special": True},
                "2": {"content": "</s>", "special": True},
            },
        },
    )
    tok = load_tokenizer(d, split_token="<|mine|>")
    assert tok.split_token_id == piece and tok.config_path.endswith("tokenizer_config.json")
    # Text is cut at added tokens before sentencepiece; special ids vanish on decode_text.
    assert tok.encode("x<|mine|>y</s>") == [*sp_tok.encode("x"), piece, *sp_tok.encode("y"), 2]
    assert tok.decode_text(tok.encode("x<|mine|>y</s>z")) == "xyz"
    assert not tok.add_bos and tok.encode_with_bos("beta") == tok.encode("beta")
    assert sp_tok.add_bos and sp_tok.encode_with_bos("beta") == [1, *sp_tok.encode("beta")]


def test_tokenizer_config_errors_name_the_field(tmp_path, sp_model):
    d = _with_config(tmp_path, sp_model, {"added_tokens_decoder": {"99999": {"content": "<x>"}}})
    with pytest.raises(ValueError, match=r"tokenizer_config.json: added_tokens_decoder\['99999'\]"):
        load_tokenizer(d)
    _with_config(tmp_path, sp_model, {"add_bos_token": "yes"})
    with pytest.raises(ValueError, match="'add_bos_token' must be true or false"):
        load_tokenizer(d)


def test_directory_prefers_the_configured_class(tmp_path, sp_model):
    import shutil

    d = _with_config(tmp_path, sp_model, {"tokenizer_class": "InternLM2Tokenizer"})
    (tmp_path / "hf").mkdir()
    shutil.copy(make_hf_tokenizer(tmp_path / "hf"), d)
    assert load_tokenizer(d).kind == "sentencepiece"  # a slow class reads tokenizer.model
    assert load_tokenizer(d).clean_up_spaces  # InternLM2's decode always cleans up spaces
    _with_config(tmp_path, sp_model, {"tokenizer_class": "LlamaTokenizerFast"})
    assert load_tokenizer(d).kind == "hf"


def test_decode_text_skips_special_tokens_in_both_kinds(tmp_path, sp_tok):
    text = "alpha<|reward|> beta"
    assert sp_tok.decode_text(sp_tok.encode_with_bos(text)) == "alpha beta"
    hf = load_tokenizer(make_hf_tokenizer(tmp_path))
    assert hf.decode_text([hf.bos_id, *hf.encode(text)]) == "alpha beta"
