"""Added-token names of a tokenizer source: the config's, else the released POLAR mapping for its vocabulary."""

from __future__ import annotations

import json
import shutil

import pytest

from megatron_polar.checkpoint.hf_io import ConversionError
from megatron_polar.checkpoint.hf_tokenizer import TokenVocab, added_tokens_of, resolve_token
from megatron_polar.data.tokenizer import train_sentencepiece
from tests.support import hf_fixtures as fx


@pytest.fixture
def bare_polar(tmp_path):
    shutil.copyfile(fx.POLAR_TOKENIZER / "tokenizer.model", tmp_path / "tokenizer.model")
    return tmp_path


def test_bare_internlm2_model_gets_the_released_names(bare_polar):
    released = json.loads((fx.POLAR_TOKENIZER / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    names = added_tokens_of(bare_polar)
    assert names == {int(i): e["content"] for i, e in released.items()}
    vocab = TokenVocab(bare_polar)
    assert resolve_token("<|reward|>", vocab, "split-token") == fx.POLAR_SPLIT_ID
    assert resolve_token("[UNUSED_TOKEN_130]", vocab, "reward-token") == fx.POLAR_REWARD_ID
    # A config without added_tokens_decoder does not hide the mapping.
    (bare_polar / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    assert added_tokens_of(bare_polar)[fx.POLAR_SPLIT_ID] == "<|reward|>"


def test_config_names_win_and_other_vocabularies_keep_their_pieces(bare_polar, tmp_path):
    config = {"added_tokens_decoder": {str(fx.POLAR_SPLIT_ID): {"content": "<|split|>"}}}
    (bare_polar / "tokenizer_config.json").write_text(json.dumps(config))
    assert added_tokens_of(bare_polar) == {fx.POLAR_SPLIT_ID: "<|split|>"}
    tiny = tmp_path / "tiny"
    train_sentencepiece(["a b c <|reward|> d"] * 20, tiny / "tokenizer", vocab_size=300)
    assert added_tokens_of(tiny) == {0: "<unk>", 1: "<s>", 2: "</s>"}
    (bare_polar / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"x": {}}}))
    with pytest.raises(ConversionError, match="added_tokens_decoder"):
        added_tokens_of(bare_polar)
