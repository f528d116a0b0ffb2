"""Inputs the converter cannot handle fail with a ConversionError naming the file or tensor."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_polar.checkpoint import hf_export, hf_io
from megatron_polar.checkpoint.hf_export import export_hf
from megatron_polar.checkpoint.hf_import import import_hf
from megatron_polar.checkpoint.hf_io import ConversionError
from megatron_polar.convert import main


@pytest.fixture
def copy_of(tmp_path, causal_dir):
    """A fresh copy of the tiny Llama directory to break."""
    dst = tmp_path / "hf"
    shutil.copytree(causal_dir, dst)
    return dst


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_missing_config(copy_of, tmp_path):
    (copy_of / "config.json").unlink()
    with pytest.raises(ConversionError, match=r"missing file .*config\.json"):
        import_hf(copy_of, tmp_path / "ck")


def test_missing_weights(copy_of, tmp_path):
    (copy_of / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"missing file .*model\.safetensors"):
        import_hf(copy_of, tmp_path / "ck")


def test_missing_shard_named_by_index(copy_of, tmp_path):
    tensors = load_file(copy_of / "model.safetensors")
    index = {"weight_map": {name: "model-00001-of-00002.safetensors" for name in tensors}}
    (copy_of / "model.safetensors.index.json").write_text(json.dumps(index))
    (copy_of / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match=r"missing file .*model-00001-of-00002\.safetensors"):
        import_hf(copy_of, tmp_path / "ck")


def test_mismatched_shape_names_tensor_and_shapes(copy_of, tmp_path):
    tensors = load_file(copy_of / "model.safetensors")
    tensors["model.layers.2.self_attn.k_proj.weight"] = torch.zeros(48, 64)
    save_file(tensors, copy_of / "model.safetensors")
    with pytest.raises(
        ConversionError, match=r"model\.layers\.2\.self_attn\.k_proj\.weight .*\[48, 64\].*\[32, 64\]"
    ):
        import_hf(copy_of, tmp_path / "ck")


def test_missing_tensor(copy_of, tmp_path):
    tensors = load_file(copy_of / "model.safetensors")
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, copy_of / "model.safetensors")
    with pytest.raises(ConversionError, match=r"model\.layers\.3\.mlp\.up_proj\.weight is missing"):
        import_hf(copy_of, tmp_path / "ck")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "unknown architecture"),
        ({"attention_bias": True}, "attention_bias=true"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "rope_scaling type 'linear'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"num_key_value_heads": 3}, "num_query_groups=3"),
    ],
    ids=["architecture", "bias", "rope-scaling", "activation", "kv-heads"],
)
def test_unrepresentable_config(copy_of, tmp_path, changes, message):
    _edit_config(copy_of, **changes)
    with pytest.raises(ConversionError, match=message):
        import_hf(copy_of, tmp_path / "ck")


def test_bias_tensors_are_refused(copy_of, tmp_path):
    """Qwen2-style q/k/v biases in the weights (whatever the config says)."""
    tensors = load_file(copy_of / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(tensors, copy_of / "model.safetensors")
    _edit_config(copy_of, architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    with pytest.raises(ConversionError, match=r"model\.layers\.0\.self_attn\.q_proj\.bias .*bias"):
        import_hf(copy_of, tmp_path / "ck")


def test_unknown_token_string(copy_of, tmp_path, seqcls_dir):
    with pytest.raises(ConversionError, match="not a token"):
        import_hf(copy_of, tmp_path / "ck", reward_token="<|nope|>", tokenizer=seqcls_dir)


def test_cli_reports_error_and_exit_code(copy_of, tmp_path, capsys):
    (copy_of / "config.json").unlink()
    assert main(["import-hf", "--hf-dir", str(copy_of), "--output", str(tmp_path / "ck")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_import_refuses_existing_checkpoint(causal_dir, causal_ckpt):
    with pytest.raises(ConversionError, match="already holds a checkpoint"):
        import_hf(causal_dir, causal_ckpt.parent)


def test_export_refuses_non_empty_target(tmp_path, causal_ckpt):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty"):
        export_hf(causal_ckpt, target)
    assert (target / "keep.txt").read_text() == "mine"


def test_export_of_missing_checkpoint(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        export_hf(tmp_path / "nope", tmp_path / "out")


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(name))


def test_failed_shard_write_leaves_nothing(tmp_path, causal_ckpt, monkeypatch):
    calls = []

    def failing_save(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(hf_io, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_hf(causal_ckpt, tmp_path / "out", max_shard_size="100KB")
    assert _leftovers(tmp_path, "out") == []


def test_failed_export_keeps_the_previous_directory(tmp_path, causal_ckpt, monkeypatch):
    """Even with --overwrite, a failure at the last file leaves the old export untouched."""
    target = export_hf(causal_ckpt, tmp_path / "out")
    before = sorted(p.name for p in target.iterdir())

    def fail(path, obj):
        raise OSError("quota exceeded")

    monkeypatch.setattr(hf_export, "write_json", fail)
    with pytest.raises(OSError, match="quota"):
        export_hf(causal_ckpt, target, overwrite=True)
    assert _leftovers(tmp_path, "out") == ["out"]
    assert sorted(p.name for p in target.iterdir()) == before
