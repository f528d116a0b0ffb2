"""Exports that outside programs load: the ``internlm2`` directory through transformers' remote code
(whatever transformers is installed: the pinned 4.x here, 5.x in the compat environment), and tokenizer
files whose fast and slow tokenizers give the ids of the released InternLM2 tokenizer.

The reference ids are computed here from the fixture files alone, as the released (slow, sentencepiece)
tokenizer computes them: the text is split at the names of ``added_tokens_decoder`` in the released
``tokenizer_config.json``, each piece is encoded by sentencepiece, BOS goes first.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from megatron_polar.checkpoint.hf_export import export_hf
from megatron_polar.checkpoint.model_loading import load_checkpoint_model
from megatron_polar.data.batching import collate_padded
from tests.support import hf_fixtures as fx

# POLAR strings (P + "\n" + R + "<|reward|>" + P + "\n" + C) with the released format's boundary cases.
POLAR_TEXTS = [
    "What is 2+2?\nThe answer is 4.<|reward|>What is 2+2?\n4",
    "Write a haiku.\n\n\nLeaves fall<|reward|>Write a haiku.\n\nSnow melts slowly",
    "system: be brief\nuser: hi\n  indented\tand\ttabs\r\nCRLF<|reward|>system: be brief\nuser: hi\nhello",
    "特殊 <|im_end|> text and <|im_start|>assistant\n中文回答。<|reward|>特殊\nＡＢＣ 😀",
    "pretrain prefix without newline<|reward|>pretrain prefix without newline continued",
]


def released_ids(text: str) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(fx.POLAR_TOKENIZER / "tokenizer.model"))
    config = json.loads((fx.POLAR_TOKENIZER / "tokenizer_config.json").read_text())
    names = {e["content"]: int(i) for i, e in config["added_tokens_decoder"].items()}
    ids = [sp.bos_id()]
    for piece in re.split("(" + "|".join(map(re.escape, names)) + ")", text):
        ids += [names[piece]] if piece in names else sp.encode(piece) if piece else []
    return ids


@pytest.fixture(scope="module")
def internlm2_export(work, polar_vocab_ckpt):
    return export_hf(
        polar_vocab_ckpt, work / "ex-polar-internlm2", fmt="internlm2", tokenizer=fx.POLAR_TOKENIZER
    )


@pytest.fixture(scope="module")
def our_model(polar_vocab_ckpt):
    _, model = load_checkpoint_model(str(polar_vocab_ckpt), precision="fp32", device="cpu")
    return model


def test_reference_ids_see_the_released_format():
    """The fixture reference is the released tokenizer: `<|reward|>` is one id and "\\n\\n" merges."""
    ids = released_ids(POLAR_TEXTS[1])
    assert ids[0] == 1 and ids.count(fx.POLAR_SPLIT_ID) == 1
    assert len(ids) < len(released_ids(POLAR_TEXTS[1].replace("\n", " ")))  # newline runs are merged


def test_internlm2_export_is_laid_out_like_polar_7b(internlm2_export):
    files = {p.name for p in internlm2_export.iterdir()}
    assert {
        "configuration_internlm2.py",
        "modeling_internlm2.py",
        "tokenization_internlm2.py",
        "tokenization_internlm2_fast.py",
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    } <= files
    config = json.loads((internlm2_export / "config.json").read_text())
    assert config["architectures"] == ["InternLM2ForRewardModel"] and config["model_type"] == "internlm2"
    assert config["auto_map"]["AutoConfig"] == "configuration_internlm2.InternLM2Config"
    assert config["auto_map"]["AutoModel"] == "modeling_internlm2.InternLM2ForRewardModel"
    assert config["rope_scaling"] == {"type": "dynamic", "factor": 2.0}
    assert config["reward_token_id"] == fx.POLAR_REWARD_ID and config["split_token_id"] == fx.POLAR_SPLIT_ID
    assert config["torch_dtype"] == "float32" and config["bias"] is False
    assert config["problem_type"] == "regression"  # vLLM's pooler returns the raw score, no sigmoid
    tok = json.loads((internlm2_export / "tokenizer_config.json").read_text())
    assert tok["added_tokens_decoder"][str(fx.POLAR_SPLIT_ID)]["content"] == "<|reward|>"
    assert tok["split_token"] == "<|reward|>" and tok["reward_token"] == "[UNUSED_TOKEN_130]"
    assert tok["auto_map"]["AutoTokenizer"] == [
        "tokenization_internlm2.InternLM2Tokenizer",
        "tokenization_internlm2_fast.InternLM2TokenizerFast",
    ]
    assert tok["add_bos_token"] is True and tok["add_eos_token"] is False


def test_internlm2_export_loads_with_remote_code_and_scores_like_our_model(internlm2_export, our_model):
    from transformers import AutoModel, AutoTokenizer

    fast = AutoTokenizer.from_pretrained(internlm2_export, trust_remote_code=True)
    slow = type(fast).slow_tokenizer_class.from_pretrained(internlm2_export)
    assert type(slow).__name__ == "InternLM2Tokenizer"
    seqs = []
    for text in POLAR_TEXTS:
        want = released_ids(text)
        assert fast(text).input_ids == want, text
        assert slow(text).input_ids == want, text
        seqs.append(want + [fx.POLAR_REWARD_ID])

    hf = AutoModel.from_pretrained(internlm2_export, trust_remote_code=True).eval()
    assert type(hf).__name__ == "InternLM2ForRewardModel"
    with torch.no_grad():
        ours = our_model(collate_padded([(s, s) for s in seqs], max(map(len, seqs))))[:, 0]
    width = max(map(len, seqs))
    for side in ("right", "left"):
        ids = torch.full((len(seqs), width), 2)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(seqs):
            cols = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
            ids[row, cols], mask[row, cols] = torch.tensor(s), 1
        with torch.no_grad():
            theirs = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert ours.abs().min() > 1e-3 and ours.unique().numel() == len(seqs)  # a real head, distinct inputs


def test_llama_export_of_a_bare_model_file_records_reward_and_tokenizes_like_sentencepiece(
    work, polar_vocab_ckpt
):
    """From a bare ``tokenizer.model`` id 92397 is ``[UNUSED_TOKEN_0]``; the export still names it ``<|reward|>``."""
    from transformers import AutoTokenizer, LlamaTokenizer

    out = export_hf(
        polar_vocab_ckpt,
        work / "ex-polar-llama",
        fmt="llama",
        tokenizer=fx.POLAR_TOKENIZER / "tokenizer.model",
    )
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["split_token"] == "<|reward|>"
    assert tok_config["added_tokens_decoder"][str(fx.POLAR_SPLIT_ID)]["content"] == "<|reward|>"
    fast = AutoTokenizer.from_pretrained(out)  # no protobuf, no conversion: it reads tokenizer.json
    slow = LlamaTokenizer.from_pretrained(out, legacy=True, add_prefix_space=False)
    for text in POLAR_TEXTS:
        want = released_ids(text)
        assert fast(text).input_ids == want, text
        assert slow(text).input_ids == want, text
    assert fast.convert_tokens_to_ids("<|reward|>") == fx.POLAR_SPLIT_ID
