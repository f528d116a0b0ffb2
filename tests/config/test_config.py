"""Every preset composes; bad configurations fail fast naming the key; laws reproduce the paper."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_polar.config import ConfigError, load_config
from megatron_polar.config.hparams import scaling_law_batch_size, scaling_law_lr
from megatron_polar.config.to_mcore import transformer_config
from megatron_polar.planning.params import count_parameters

CONF = Path(__file__).resolve().parents[2] / "conf"


def _presets():
    for group in sorted(p for p in CONF.iterdir() if p.is_dir()):
        for preset in sorted(group.glob("*.yaml")):
            yield f"{group.name}={preset.stem}"


@pytest.mark.parametrize("override", list(_presets()))
def test_every_preset_composes(override):
    cfg = load_config([override])
    assert cfg.model.num_layers > 0


def _released_count(vocab, hidden, layers, heads, kv, ffn):
    """Parameters of a released InternLM2ForRewardModel: embeddings, layers, final norm, v_head."""
    head_dim = hidden // heads
    wqkv = (heads + 2 * kv) * head_dim * hidden
    wo = hidden * hidden
    w123 = 3 * hidden * ffn
    norms = 2 * hidden
    return vocab * hidden + layers * (wqkv + wo + w123 + norms) + hidden + hidden


@pytest.mark.parametrize(
    "preset,shape",
    [
        ("polar_7b", (92544, 4096, 32, 32, 8, 14336)),
        ("polar_1_8b", (92544, 2048, 24, 16, 8, 8192)),
    ],
)
def test_released_shapes_and_parameter_counts(preset, shape):
    cfg = load_config([f"model={preset}"])
    m = cfg.model
    assert (
        m.vocab_size,
        m.hidden_size,
        m.num_layers,
        m.num_attention_heads,
        m.num_query_groups,
        m.ffn_hidden_size,
    ) == shape
    assert count_parameters(cfg.model).total == _released_count(*shape)
    assert m.reward_token_id == 92527 and m.split_token_id == 92397


def test_polar_7b_is_about_7_36b_parameters():
    assert count_parameters(load_config(["model=polar_7b"]).model).total == 7_358_652_416


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.hiden_size=3"], "hiden_size"),
        (["parallel.tensor_model_parallel_size=3"], "parallel.tensor_model_parallel_size"),
        (["model=polar_7b", "parallel.tensor_model_parallel_size=16"], "parallel.tensor_model_parallel_size"),
        (["parallel.pipeline_model_parallel_size=3"], "model.num_layers"),
        (["model.reward_token_id=999"], "model.reward_token_id"),
        (["model.split_token_id=-1"], "model.split_token_id"),
        (["data.layout=unpacked"], "data.layout"),
        (["optim.lr=fast"], "optim.lr"),
        (["train.global_batch_size=-4"], "train.global_batch_size"),
        (["model.fp8=e4m3", "model.transformer_impl=local"], "model.fp8"),
        (["model.recompute_granularity=full"], "model.recompute_method"),
        (["parallel.sequence_parallel=true"], "parallel.sequence_parallel"),
        (["data.seq_length=100000"], "data.seq_length"),
    ],
)
def test_bad_configuration_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides)


def test_scaling_laws_reproduce_the_paper_within_5_percent():
    n18 = count_parameters(load_config(["model=polar_1_8b"]).model).total
    n7 = count_parameters(load_config(["model=polar_7b"]).model).total
    assert scaling_law_lr(n18, 2.5e12, 0.94e12) == pytest.approx(1.4e-5, rel=0.05)
    assert scaling_law_batch_size(n18, 0.94e12) == pytest.approx(1940, rel=0.05)
    assert scaling_law_lr(n7, 4.0e12, 3.6e12) == pytest.approx(1.67e-5, rel=0.05)
    assert scaling_law_batch_size(n7, 3.6e12) == pytest.approx(4343, rel=0.05)


def test_fp8_and_recompute_reach_transformer_config():
    cfg = load_config(
        [
            "model=polar_7b",
            "model.fp8=hybrid",
            "model.fp8_recipe=tensorwise",
            "model.fp8_amax_history_len=16",
            "model.fp8_amax_compute_algo=most_recent",
            "model.fp8_margin=1",
            "model.recompute_granularity=full",
            "model.recompute_method=uniform",
            "model.recompute_num_layers=2",
        ]
    )
    tc = transformer_config(cfg, use_te=True, on_gpu=False)
    assert (tc.fp8, tc.fp8_recipe, tc.fp8_amax_history_len, tc.fp8_amax_compute_algo, tc.fp8_margin) == (
        "hybrid",
        "tensorwise",
        16,
        "most_recent",
        1,
    )
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == ("full", "uniform", 2)
    assert tc.normalization == "RMSNorm" and tc.gated_linear_unit and not tc.add_bias_linear
    assert tc.num_query_groups == 8 and tc.calculate_per_token_loss


def test_selective_recompute_passes_through():
    cfg = load_config(["model.recompute_granularity=selective"])
    assert transformer_config(cfg, use_te=False, on_gpu=False).recompute_granularity == "selective"
