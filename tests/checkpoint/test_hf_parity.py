"""The imported reward model computes what the HF model computes, and the export scores the same."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from megatron_polar.checkpoint.hf_export import export_hf
from megatron_polar.checkpoint.hf_import import import_hf
from megatron_polar.checkpoint.model_loading import load_checkpoint_model
from megatron_polar.data.batching import collate_padded
from tests.support import hf_fixtures as fx

SEQ = 32


def _sequences() -> list[list[int]]:
    """POLAR-shaped token sequences: prompt+reference <split> prompt+candidate <reward>."""
    gen = torch.Generator().manual_seed(3)
    words = lambda n: torch.randint(3, fx.SPLIT_ID, (n,), generator=gen).tolist()  # noqa: E731
    return [words(a) + [fx.SPLIT_ID] + words(b) + [fx.REWARD_ID] for a, b in ((2, 2), (5, 4), (11, 17))]


def _rewards(model, seqs) -> torch.Tensor:
    with torch.no_grad():
        return model(collate_padded([(s, s) for s in seqs], SEQ))[:, 0]


@pytest.fixture(scope="module")
def polar(seqcls_ckpt):
    _, model = load_checkpoint_model(str(seqcls_ckpt), precision="fp32", device="cpu")
    return model


def test_hidden_state_at_reward_token_matches_hf(polar, seqcls_dir):
    from transformers import LlamaModel

    hf = LlamaModel.from_pretrained(seqcls_dir, attn_implementation="eager").eval()
    seqs = _sequences()
    with torch.no_grad():
        ours = polar.reward_hidden_states(collate_padded([(s, s) for s in seqs], SEQ))[:, 0]
        ref = torch.stack([hf(torch.tensor([s])).last_hidden_state[0, -1] for s in seqs])
    assert F.cosine_similarity(ours, ref, dim=-1).min() >= 0.99999
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_exported_llama_scores_like_the_reward_model(work, polar, seqcls_dir, seqcls_ckpt):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = export_hf(seqcls_ckpt, work / "ex-llama-tok", fmt="llama", tokenizer=seqcls_dir)
    config = json.loads((out / "config.json").read_text())
    assert config["reward_token_id"] == fx.REWARD_ID and config["split_token_id"] == fx.SPLIT_ID
    assert config["pad_token_id"] == fx.PAD_ID  # the tokenizer's pad token
    hf = AutoModelForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
    seqs = _sequences()
    # Right-padded batch: stock pooling reads the last non-pad token, which is the reward token.
    width = max(map(len, seqs))
    ids = torch.tensor([s + [fx.PAD_ID] * (width - len(s)) for s in seqs])
    with torch.no_grad():
        hf_scores = hf(input_ids=ids, attention_mask=(ids != fx.PAD_ID).long()).logits[:, 0]
    torch.testing.assert_close(_rewards(polar, seqs), hf_scores, atol=1e-5, rtol=1e-5)
    assert hf_scores.abs().min() > 1e-3  # a real head, not the zero default

    tok = AutoTokenizer.from_pretrained(out)
    text = f"w5 w6 {fx.SPLIT_TOKEN} w5 w7 {fx.REWARD_TOKEN}"
    assert tok(text, add_special_tokens=False)["input_ids"] == [5, 6, fx.SPLIT_ID, 5, 7, fx.REWARD_ID]
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["reward_token"] == fx.REWARD_TOKEN and tok_config["split_token"] == fx.SPLIT_TOKEN
    special = json.loads((out / "special_tokens_map.json").read_text())["additional_special_tokens"]
    assert fx.REWARD_TOKEN in special and fx.SPLIT_TOKEN in special


def test_internlm2_layout_imports_to_the_same_model(work, polar, seqcls_dir):
    """A hand-packed InternLM2 directory of the same weights gives the same tensors and rewards."""
    internlm2_dir = fx.save_internlm2(seqcls_dir, work / "hf-internlm2")
    ckpt = import_hf(internlm2_dir, work / "ck-internlm2")
    cfg, other = load_checkpoint_model(str(ckpt), precision="fp32", device="cpu")
    assert cfg.model.reward_token_id == fx.REWARD_ID
    mine, theirs = polar.state_dict(), other.state_dict()
    for name, tensor in mine.items():
        if not name.endswith("_extra_state"):
            assert torch.equal(theirs[name], tensor), name
    seqs = _sequences()
    assert torch.equal(_rewards(other, seqs), _rewards(polar, seqs))
