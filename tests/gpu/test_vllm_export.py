"""vLLM loads an ``internlm2`` export as its native ``InternLM2ForRewardModel`` and scores like our model.

GPU-marked: vLLM needs a CUDA GPU. Where vLLM is not installed the test skips with that reason.
"""

from __future__ import annotations

import pytest
import torch

from tests.support import hf_fixtures as fx

pytestmark = pytest.mark.gpu

TEXTS = [
    "What is 2+2?\nThe answer is 4.<|reward|>What is 2+2?\n4",
    "Write a haiku.\n\n\nLeaves fall<|reward|>Write a haiku.\n\nSnow melts slowly",
]


def _build(tmp_path):
    from megatron_polar.checkpoint.hf_export import export_hf
    from megatron_polar.checkpoint.hf_import import import_hf

    hf = fx.save_llama(tmp_path / "hf", seq_cls=True, seed=11, vocab_size=fx.POLAR_VOCAB, layers=2)
    ckpt = import_hf(hf, tmp_path / "ck", reward_token=fx.POLAR_REWARD_ID, split_token=fx.POLAR_SPLIT_ID)
    out = export_hf(ckpt, tmp_path / "ex", fmt="internlm2", tokenizer=fx.POLAR_TOKENIZER)
    return ckpt, out


def test_vllm_scores_an_internlm2_export_like_our_model(tmp_path):
    vllm = pytest.importorskip("vllm", reason="vLLM is not installed")
    from transformers import AutoTokenizer

    from megatron_polar.checkpoint.model_loading import load_checkpoint_model
    from megatron_polar.data.batching import collate_padded

    ckpt, out = _build(tmp_path)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    seqs = [tok(t).input_ids + [fx.POLAR_REWARD_ID] for t in TEXTS]
    _, model = load_checkpoint_model(str(ckpt), precision="fp32", device="cpu")
    with torch.no_grad():
        ours = model(collate_padded([(s, s) for s in seqs], max(map(len, seqs))))[:, 0]

    llm = vllm.LLM(
        model=str(out), trust_remote_code=True, dtype="float32", enforce_eager=True, max_model_len=512
    )
    outputs = llm.encode([{"prompt_token_ids": s} for s in seqs], pooling_task="token_classify")
    # Token-wise pooling (default ALL for InternLM2ForRewardModel): one score per token; the reward is the last.
    theirs = torch.tensor([float(o.outputs.data.reshape(-1)[-1]) for o in outputs])
    torch.testing.assert_close(theirs, ours, atol=1e-3, rtol=1e-3)
