"""The memory model against a hand calculation on a small configuration."""

from __future__ import annotations

import pytest

from megatron_polar.config.loader import load_config
from megatron_polar.planning import plan_layout
from megatron_polar.planning.memory import Recompute, layer_activation_bytes, stage_activation_bytes

# tiny: h 64, 4 heads (d 16), 2 KV groups, ffn 176, 4 layers; TP 2 x PP 2 x DP 2 on 8 GPUs
BASE = ["model=tiny", "parallel=tp2pp2", "parallel.sequence_parallel=true", "data.seq_length=128"]
BASE += ["train.micro_batch_size=1", "train.global_batch_size=4"]


def _plan(*extra: str):
    return plan_layout(load_config(BASE + list(extra)), world_size=8, overhead_gb=0.0)


def test_model_state_and_activations_by_hand():
    plan = _plan()
    assert (plan.tp, plan.pp, plan.dp, plan.num_micro_batches) == (2, 2, 2, 2)
    s0, s1 = plan.memory
    p0, p1 = 62_720, 46_464  # per-GPU parameters of stage 0 and 1 (see test_params)
    assert (s0.weights, s0.gradients, s0.optimizer) == (2 * p0, 4 * p0, 12 * p0 / 2)
    assert (s1.weights, s1.gradients, s1.optimizer) == (2 * p1, 4 * p1, 12 * p1 / 2)
    # per layer: s*b*(12h + 4*kv*d + 6*ffn)/t = 128*(768 + 128 + 1056)/2 with sequence parallelism
    layer = 128 * (12 * 64 + 4 * 2 * 16 + 6 * 176) / 2
    assert layer == 124_928
    assert s0.activations == 2 * 2 * layer  # 2 layers, 2 micro-batches in flight (1F1B, PP=2)
    assert s1.activations == 1 * 2 * layer  # the last stage holds one
    assert plan.peak_stage == 0
    assert s0.total == 2 * p0 + 4 * p0 + 6 * p0 + 4 * layer


def test_recomputation_by_hand():
    layer, x = 124_928, 2 * 128 * 64 / 2  # full layer; checkpointed input (sequence-sharded)
    full = _plan(
        "model.recompute_granularity=full", "model.recompute_method=uniform", "model.recompute_num_layers=1"
    )
    assert full.memory[0].activations == 2 * 2 * x + layer  # inputs of 2 layers x 2 in flight + 1 working set
    block = _plan(
        "model.recompute_granularity=full", "model.recompute_method=block", "model.recompute_num_layers=1"
    )
    assert block.memory[0].activations == 2 * (x + layer) + layer
    selective = _plan("model.recompute_granularity=selective")
    assert selective.memory[0].activations == 4 * layer  # flash attention: nothing left to drop


def test_without_sequence_parallel_and_flash_attention():
    model = load_config(["model=tiny"]).model
    no_sp = layer_activation_bytes(model, 128, 1, tp=2, sequence_parallel=False)
    assert no_sp == 8 * 128 * 64 + 128 * (4 * 64 + 4 * 2 * 16 + 6 * 176) / 2
    unfused = layer_activation_bytes(model, 128, 1, tp=2, sequence_parallel=True, flash_attention=False)
    assert unfused == 124_928 + 5 * 4 * 128 * 128 / 2  # Korthikanti's 5*a*s^2*b/t
    dropped = stage_activation_bytes(
        model, 1, 128, 1, 2, True, Recompute("selective"), 1.0, flash_attention=False
    )
    assert dropped == 124_928


def test_padded_pairs_are_two_sequences():
    packed = _plan()
    padded = _plan("data.layout=padded")
    assert padded.sequences_per_micro_batch == 2
    assert padded.memory[0].activations == pytest.approx(2 * packed.memory[0].activations)


def test_fp32_and_replicated_optimizer():
    plan = _plan("train.precision=fp32", "parallel.use_distributed_optimizer=false")
    p0 = 62_720
    assert (plan.memory[0].weights, plan.memory[0].gradients, plan.memory[0].optimizer) == (
        4 * p0,
        4 * p0,
        8 * p0,
    )
