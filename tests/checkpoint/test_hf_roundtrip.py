"""HF -> megatron_polar -> HF is exact, from a one-process import and from a TP=2 x PP=2 save."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from megatron_polar.checkpoint.hf_export import export_hf
from megatron_polar.checkpoint.hf_import import import_hf
from megatron_polar.convert import main
from tests.checkpoint.hf_workers import resave_at_layout
from tests.support import hf_fixtures as fx
from tests.support.launcher import run_distributed


def _assert_identical(got: dict, want: dict, skip=()) -> None:
    for name, tensor in want.items():
        if name in skip:
            continue
        assert name in got, f"{name} missing from the export"
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), f"{name} differs"


def test_llama_round_trip_is_exact(work, causal_dir, causal_ckpt):
    out = work / "rt-llama"
    assert (
        main(
            ["export-hf", "--checkpoint", str(causal_ckpt.parent), "--output", str(out), "--format", "llama"]
        )
        == 0
    )
    source, exported = load_file(causal_dir / "model.safetensors"), fx.load_dir(out)
    _assert_identical(exported, source, skip={"lm_head.weight"})
    assert set(exported) == (set(source) - {"lm_head.weight"}) | {"score.weight"}
    assert torch.count_nonzero(exported["score.weight"]) == 0  # no source head: zero head
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1


@pytest.mark.distributed
def test_round_trip_through_tp2_pp2_checkpoint(work, causal_dir, causal_ckpt):
    """Load the import at TP=2 x PP=2, save it from that layout, export in one process: still exact."""
    root = work / "ck-tp2pp2"
    results = run_distributed(resave_at_layout, 4, str(causal_ckpt), str(root), 2, 2, 5, timeout=240)
    # Each rank held a quarter-ish of the model: TP halves the QKV rows, PP halves the layers.
    qkv = [r["shapes"]["decoder.layers.0.self_attention.linear_qkv.weight"] for r in results]
    assert all(s[0] == (fx.HEADS + 2 * fx.KV_HEADS) * fx.HIDDEN // fx.HEADS // 2 for s in qkv)
    assert sorted((r["tp"], r["pp"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    out = export_hf(root, work / "rt-tp2pp2", fmt="llama", max_shard_size="100KB")
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    _assert_identical(fx.load_dir(out), load_file(causal_dir / "model.safetensors"), skip={"lm_head.weight"})


def test_sharded_export_loads_in_transformers(work, causal_ckpt, causal_dir):
    from transformers import LlamaForSequenceClassification

    out = export_hf(causal_ckpt, work / "rt-sharded", fmt="llama", max_shard_size="200KB")
    model = LlamaForSequenceClassification.from_pretrained(out)
    source = load_file(causal_dir / "model.safetensors")
    _assert_identical({k: v for k, v in model.state_dict().items()}, source, skip={"lm_head.weight"})


def test_internlm2_export_reimports_identically(work, seqcls_dir, seqcls_ckpt):
    out = export_hf(seqcls_ckpt, work / "ex-internlm2", fmt="internlm2", tokenizer=seqcls_dir)
    exported = fx.load_dir(out)
    # Names, shapes and packing match an InternLM2 directory packed by hand from the Llama weights.
    by_hand = fx.llama_to_internlm2(load_file(seqcls_dir / "model.safetensors"))
    assert set(exported) == set(by_hand)
    _assert_identical(exported, by_hand)
    llama = load_file(seqcls_dir / "model.safetensors")
    for i in range(fx.LAYERS):
        q, k, v = fx.unpack_wqkv_by_hand(exported[f"model.layers.{i}.attention.wqkv.weight"])
        assert torch.equal(q, llama[f"model.layers.{i}.self_attn.q_proj.weight"])
        assert torch.equal(k, llama[f"model.layers.{i}.self_attn.k_proj.weight"])
        assert torch.equal(v, llama[f"model.layers.{i}.self_attn.v_proj.weight"])
    assert exported["v_head.weight"].shape == (1, fx.HIDDEN)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["InternLM2ForRewardModel"] and config["model_type"] == "internlm2"
    assert config["auto_map"]["AutoModel"] == "modeling_internlm2.InternLM2ForRewardModel"
    assert config["reward_token_id"] == fx.REWARD_ID and config["split_token_id"] == fx.SPLIT_ID
    assert config["bias"] is False and config["num_key_value_heads"] == fx.KV_HEADS
    # Re-import the export: the same megatron tensors as the original import.
    again = import_hf(out, work / "ck-reimport")
    back = export_hf(again, work / "ex-internlm2-again", fmt="internlm2")
    _assert_identical(fx.load_dir(back), exported)


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16)])
def test_export_casts_dtype(work, causal_ckpt, causal_dir, dtype, torch_dtype):
    out = export_hf(causal_ckpt, work / f"rt-{dtype}", fmt="llama", dtype=dtype)
    exported, source = fx.load_dir(out), load_file(causal_dir / "model.safetensors")
    name = "model.layers.1.self_attn.k_proj.weight"
    assert exported[name].dtype == torch_dtype and torch.equal(exported[name], source[name].to(torch_dtype))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_tied_embeddings_import_without_lm_head(work):
    """A tied LM head is not saved separately; the reward model needs only the embedding."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(fx.llama_config(tie_word_embeddings=True))
    model.save_pretrained(work / "hf-tied", safe_serialization=True)
    source = load_file(work / "hf-tied" / "model.safetensors")
    assert "lm_head.weight" not in source
    ckpt = import_hf(work / "hf-tied", work / "ck-tied", reward_token=7)
    exported = fx.load_dir(export_hf(ckpt, work / "rt-tied"))
    _assert_identical(exported, source)
    assert json.loads((work / "rt-tied" / "config.json").read_text())["reward_token_id"] == 7
