"""An HF ``tokenizers`` tokenizer made in the test (tests/support/tokenizers.py) round-trips text."""

from __future__ import annotations

from megatron_polar.data.tokenizer import load_tokenizer
from tests.support.tokenizers import make_hf_tokenizer


def test_hf_round_trip(tmp_path):
    tok = load_tokenizer(make_hf_tokenizer(tmp_path))
    text = "alpha 数据\n<|reward|>é"
    assert tok.decode(tok.encode(text)) == text and tok.encode("[UNUSED_TOKEN_130]") == [tok.reward_token_id]
