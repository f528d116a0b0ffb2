"""Pure unit tests of the HF layout rules: QKV packing, TE names, sizes, shard writing."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from megatron_polar.checkpoint.hf_io import ConversionError, ShardedSafetensorsWriter, parse_size
from megatron_polar.checkpoint.hf_layouts import (
    LAYOUTS,
    TrunkShape,
    detect_layout,
    pack_qkv,
    resolve_mcore_name,
    unpack_qkv,
)
from tests.support.hf_fixtures import pack_wqkv_by_hand


@pytest.mark.parametrize(
    "heads,kv_heads", [(4, 4), (4, 2), (8, 2), (4, 1)], ids=["mha", "gqa2", "gqa4", "mqa"]
)
def test_pack_qkv_matches_grouping_by_hand(heads, kv_heads):
    d, hidden = 3, 5  # hidden of the projections' input; head_dim comes from the shape's width
    q = torch.randn(heads * d, hidden)
    k, v = torch.randn(kv_heads * d, hidden), torch.randn(kv_heads * d, hidden)
    shape = TrunkShape(1, heads * d, heads, kv_heads, 8, 16)  # head_dim = hidden_size // heads = d
    packed = pack_qkv(q, k, v, shape)
    assert torch.equal(packed, pack_wqkv_by_hand(q, k, v, heads, kv_heads))
    q2, k2, v2 = unpack_qkv(packed, shape)
    assert torch.equal(q2, q) and torch.equal(k2, k) and torch.equal(v2, v)


def test_te_norm_names_are_resolved():
    te = {
        "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight": 0,
        "decoder.layers.0.mlp.linear_fc1.layer_norm_weight": 0,
    }
    assert resolve_mcore_name("decoder.layers.0.input_layernorm.weight", te).endswith(
        "linear_qkv.layer_norm_weight"
    )
    assert resolve_mcore_name("decoder.layers.0.pre_mlp_layernorm.weight", te).endswith(
        "linear_fc1.layer_norm_weight"
    )
    with pytest.raises(KeyError):
        resolve_mcore_name("decoder.layers.1.input_layernorm.weight", te)


def test_layout_detection_and_names():
    assert detect_layout({"model.embed_tokens.weight"}).name == "llama"
    assert detect_layout({"model.tok_embeddings.weight"}).name == "internlm2"
    assert detect_layout({"transformer.wte.weight"}) is None
    shape = TrunkShape(2, 8, 2, 1, 4, 10)
    names = [n for n, _ in LAYOUTS["internlm2"].from_mcore(shape, lambda n: None)]
    assert names[0] == "model.tok_embeddings.weight" and names[-1] == "v_head.weight"
    assert "model.layers.1.attention.wqkv.weight" in names and len(names) == 2 + 2 * 7 + 1


def test_parse_size():
    assert parse_size("4GB") == 4 * 10**9 and parse_size("500MiB") == 500 * 2**20 and parse_size(123) == 123
    with pytest.raises(ConversionError):
        parse_size("lots")


def test_writer_shards_and_indexes(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, max_shard_bytes=100, dtype=torch.float16)
    base = torch.arange(60, dtype=torch.float32).view(3, 20)
    for i, view in enumerate(base):  # views of one tensor: each must get its own storage
        writer.add(f"t{i}", view)
    files = writer.finish()
    assert (
        files[-1] == "model.safetensors.index.json" and len(files) == 2 + 1
    )  # 40-byte tensors, two per 100-byte shard
    loaded = {k: v for f in files[:-1] for k, v in load_file(tmp_path / f).items()}
    assert all(torch.equal(loaded[f"t{i}"], base[i].half()) for i in range(3))
