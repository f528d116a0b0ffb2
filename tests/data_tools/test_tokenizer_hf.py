"""An HF ``tokenizers`` tokenizer made in the test, for builds with ``tokenizer.json``."""

from __future__ import annotations

from megatron_polar.data.tokenizer import load_tokenizer


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


def test_hf_round_trip(tmp_path):
    tok = load_tokenizer(make_hf_tokenizer(tmp_path))
    text = "alpha 数据\n<|reward|>é"
    assert tok.decode(tok.encode(text)) == text and tok.encode("[UNUSED_TOKEN_130]") == [tok.reward_token_id]
