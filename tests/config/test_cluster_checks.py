"""Config-time checks for the GPU path: FP8 shapes and hardware, determinism and the DDP settings."""

from __future__ import annotations

import re

import pytest

from megatron_polar.config import ConfigError, load_config
from megatron_polar.config.to_mcore import ddp_config, ddp_config_aligns_param_gather, optimizer_config
from megatron_polar.config.validate import fp8_gemm_dims, validate_fp8_hardware
from megatron_polar.training.setup import apply_determinism_env


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["model.fp8=e4m3", "model.hidden_size=72", "model.num_attention_heads=4"], "model.hidden_size"),
        (["model.fp8=e4m3", "model.ffn_hidden_size=136"], "model.ffn_hidden_size"),
        (["model.fp8=e4m3", "data.seq_length=1000"], "data.seq_length"),
        (
            ["model.fp8=e4m3", "model.hidden_size=80", "model.num_attention_heads=8"],
            "(model.num_attention_heads + 2 x model.num_query_groups) x head_dim",
        ),
    ],
)
def test_fp8_gemm_dimension_not_a_multiple_of_16_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match="multiples of 16.*" + re.escape(key)):
        load_config(overrides)


def test_the_same_shapes_pass_without_fp8():
    load_config(["model.hidden_size=72", "model.num_attention_heads=4", "data.seq_length=1000"])


def test_paper_presets_have_fp8_friendly_shapes():
    for model, parallel in (("polar_7b", "h800_7b"), ("polar_1_8b", "h800_1_8b")):
        cfg = load_config(
            [f"model={model}", f"parallel={parallel}", "model.fp8=hybrid", "data.seq_length=32768"]
        )
        assert all(v % 16 == 0 for v in fp8_gemm_dims(cfg).values())


def test_mxfp8_is_refused_on_hopper_naming_the_key():
    cfg = load_config(["model.fp8=e4m3", "model.fp8_recipe=mxfp8"])
    with pytest.raises(ConfigError, match=r"model\.fp8_recipe=mxfp8.*sm90"):
        validate_fp8_hardware(cfg, (9, 0))
    validate_fp8_hardware(cfg, (10, 0))  # Blackwell runs it
    for recipe in ("delayed", "tensorwise"):
        validate_fp8_hardware(load_config(["model.fp8=e4m3", f"model.fp8_recipe={recipe}"]), (9, 0))
    validate_fp8_hardware(load_config(["model.fp8_recipe=mxfp8"]), (9, 0))  # no fp8: recipe unused


def test_deterministic_turns_off_nondeterministic_attention():
    env = {"NVTE_ALLOW_NONDETERMINISTIC_ALGO": "1"}  # what the launchers export
    apply_determinism_env(load_config(["train.deterministic=true"]), env)
    assert env["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "0"
    env = {"NVTE_ALLOW_NONDETERMINISTIC_ALGO": "1"}
    apply_determinism_env(load_config([]), env)
    assert env["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "1"
    env = {}
    apply_determinism_env(load_config(["train.deterministic=true"]), env)
    assert env == {"NVTE_ALLOW_NONDETERMINISTIC_ALGO": "0"}  # TE's default when unset is 1


@pytest.mark.parametrize(
    "overrides,aligned",
    [
        (["parallel.overlap_param_gather=true"], False),
        (["parallel=tp2pp2", "parallel.overlap_param_gather=true"], False),
        (
            [
                "parallel.pipeline_model_parallel_size=2",
                "parallel.virtual_pipeline_model_parallel_size=2",
                "model.num_layers=4",
                "parallel.overlap_param_gather=true",
            ],
            True,
        ),
        (
            [
                "parallel.pipeline_model_parallel_size=2",
                "parallel.virtual_pipeline_model_parallel_size=2",
                "model.num_layers=4",
            ],
            False,
        ),
    ],
)
def test_param_gather_is_aligned_only_under_the_interleaved_schedule(overrides, aligned):
    cfg = load_config(overrides)
    assert ddp_config_aligns_param_gather(cfg) is aligned
    assert ddp_config(cfg).align_param_gather is aligned


def test_bucket_size_is_left_to_megatron_core_and_fp16_starts_at_2_16():
    cfg = load_config([])
    assert ddp_config(cfg).bucket_size is None
    assert optimizer_config(load_config(["train.precision=fp16"]), 1e-4).initial_loss_scale == 2.0**16
