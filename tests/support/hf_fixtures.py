"""Tiny HF checkpoints built in the tests, and an InternLM2 packer written independently of the product."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 64, 4, 4, 2, 176, 256
PAD_ID, SPLIT_ID, REWARD_ID = 0, 254, 255
SPLIT_TOKEN, REWARD_TOKEN = "<|reward|>", "[UNUSED_TOKEN_130]"
# The released InternLM2 tokenizer (tests/fixtures/polar7b-tokenizer) and its POLAR ids.
POLAR_TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "polar7b-tokenizer"
POLAR_VOCAB, POLAR_SPLIT_ID, POLAR_REWARD_ID = 92544, 92397, 92527


def llama_config(vocab_size: int = VOCAB, layers: int = LAYERS, **extra):
    from transformers import LlamaConfig

    extra.setdefault("tie_word_embeddings", False)
    return LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=FFN,
        vocab_size=vocab_size,
        rope_theta=10000.0,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        pad_token_id=PAD_ID,
        **extra,
    )


def _randomise(model: torch.nn.Module, seed: int) -> None:
    # HF's init leaves norms at 1 and is small; random everything exercises every mapping.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if p.dim() == 1 else 0.0))


def save_llama(out: Path, seq_cls: bool, seed: int, vocab_size: int = VOCAB, layers: int = LAYERS) -> Path:
    """A random ``LlamaForCausalLM`` (or ``LlamaForSequenceClassification`` with one label) in ``out``."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    shape = {"vocab_size": vocab_size, "layers": layers}
    cfg = llama_config(num_labels=1, **shape) if seq_cls else llama_config(**shape)
    model = LlamaForSequenceClassification(cfg) if seq_cls else LlamaForCausalLM(cfg)
    _randomise(model, seed)
    model.save_pretrained(out, safe_serialization=True)
    return out


def save_tokenizer(out: Path) -> None:
    """A word-level ``tokenizer.json`` whose last two ids are the POLAR split and reward tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<s>", "</s>"] + [f"w{i}" for i in range(3, SPLIT_ID)] + [SPLIT_TOKEN, REWARD_TOKEN]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "bos_token": "<s>",
        "eos_token": "</s>",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))


def pack_wqkv_by_hand(q, k, v, heads: int = HEADS, kv_heads: int = KV_HEADS) -> torch.Tensor:
    """InternLM2 ``wqkv``: for each KV group its query heads, then its key head, then its value head."""
    d, per = q.shape[0] // heads, heads // kv_heads
    rows = []
    for g in range(kv_heads):
        for j in range(per):
            head = g * per + j
            rows.append(q[head * d : (head + 1) * d])
        rows.append(k[g * d : (g + 1) * d])
        rows.append(v[g * d : (g + 1) * d])
    return torch.cat(rows)


def unpack_wqkv_by_hand(wqkv, heads: int = HEADS, kv_heads: int = KV_HEADS):
    """Inverse of :func:`pack_wqkv_by_hand`, row block by row block."""
    d, per = wqkv.shape[0] // (heads + 2 * kv_heads), heads // kv_heads
    q, k, v = [], [], []
    block = lambda n: wqkv[n * d : (n + 1) * d]  # noqa: E731
    for g in range(kv_heads):
        base = g * (per + 2)
        q += [block(base + j) for j in range(per)]
        k.append(block(base + per))
        v.append(block(base + per + 1))
    return torch.cat(q), torch.cat(k), torch.cat(v)


def llama_to_internlm2(llama: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and pack a Llama state dict into InternLM2's names (``score`` becomes ``v_head``)."""
    out = {
        "model.tok_embeddings.weight": llama["model.embed_tokens.weight"],
        "model.norm.weight": llama["model.norm.weight"],
    }
    if "score.weight" in llama:
        out["v_head.weight"] = llama["score.weight"]
    if "lm_head.weight" in llama:
        out["output.weight"] = llama["lm_head.weight"]
    for i in range(LAYERS):
        s, d = f"model.layers.{i}.", f"model.layers.{i}."
        out[d + "attention.wqkv.weight"] = pack_wqkv_by_hand(
            llama[s + "self_attn.q_proj.weight"],
            llama[s + "self_attn.k_proj.weight"],
            llama[s + "self_attn.v_proj.weight"],
        )
        out[d + "attention.wo.weight"] = llama[s + "self_attn.o_proj.weight"]
        out[d + "feed_forward.w1.weight"] = llama[s + "mlp.gate_proj.weight"]
        out[d + "feed_forward.w3.weight"] = llama[s + "mlp.up_proj.weight"]
        out[d + "feed_forward.w2.weight"] = llama[s + "mlp.down_proj.weight"]
        out[d + "attention_norm.weight"] = llama[s + "input_layernorm.weight"]
        out[d + "ffn_norm.weight"] = llama[s + "post_attention_layernorm.weight"]
    return out


def save_internlm2(llama_dir: Path, out: Path) -> Path:
    """An ``InternLM2ForRewardModel``-style directory holding the weights of ``llama_dir``."""
    out.mkdir(parents=True)
    tensors = llama_to_internlm2(load_file(llama_dir / "model.safetensors"))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, out / "model.safetensors", metadata={"format": "pt"}
    )
    config = {
        "architectures": ["InternLM2ForRewardModel"],
        "model_type": "internlm2",
        "bias": False,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": LAYERS,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "vocab_size": VOCAB,
        "reward_token_id": REWARD_ID,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory (single file or sharded)."""
    index = path / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(path / f))
    return out
