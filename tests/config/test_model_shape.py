"""The one list of model keys: the HF shape, the import overrides and the trainer's check all read it."""

from __future__ import annotations

from dataclasses import fields, replace

from megatron_polar.checkpoint.hf_config import model_overrides
from megatron_polar.checkpoint.hf_layouts import TrunkShape
from megatron_polar.config.model_shape import (
    HF_CONFIG_KEYS,
    TRUNK_SHAPE_KEYS,
    WEIGHT_KEYS,
    model_differences,
)
from megatron_polar.config.schema import ModelConfig


def _distinct_model() -> ModelConfig:
    """A config whose shape keys all hold different values, so a swapped field cannot go unseen."""
    return ModelConfig(
        num_layers=3,
        hidden_size=40,
        num_attention_heads=5,
        num_query_groups=1,
        ffn_hidden_size=64,
        vocab_size=97,
        reward_token_id=90,
        split_token_id=91,
    )


def test_trunk_shape_takes_each_field_from_its_key():
    m = _distinct_model()
    shape = TrunkShape.of(m)
    assert len(fields(TrunkShape)) == len(TRUNK_SHAPE_KEYS)
    assert (shape.num_layers, shape.hidden_size, shape.num_heads) == (3, 40, 5)
    assert (shape.num_kv_heads, shape.ffn_hidden_size, shape.vocab_size) == (1, 64, 97)


def test_import_overrides_name_every_hf_key_once():
    overrides = model_overrides(_distinct_model())
    assert [o.split("=")[0] for o in overrides] == [f"model.{k}" for k in HF_CONFIG_KEYS]
    assert set(WEIGHT_KEYS) <= set(HF_CONFIG_KEYS)
    assert "model.num_query_groups=1" in overrides and "model.vocab_size=97" in overrides


def test_differences_name_each_changed_weight_key():
    m = _distinct_model()
    assert model_differences(m, m) == []
    other = replace(
        m, rotary_base=500000.0, num_layers=4, max_position_embeddings=m.max_position_embeddings + 1
    )
    diff = model_differences(m, other)
    assert diff == [
        "model.num_layers: checkpoint 3 vs config 4",
        f"model.rotary_base: checkpoint {m.rotary_base} vs config 500000.0",
    ]
