"""Parameter and FLOP formulas have one home (planning/); the trainer's MFU and the builder's count
agree with the hand-written formulas they replaced (the parameter count itself is checked against the
released checkpoints' shapes in tests/config/test_config.py)."""

import pytest

from megatron_polar.config import load_config
from megatron_polar.planning.flops import estimate_flops, model_flops
from megatron_polar.planning.params import count_parameters


def _old_metrics_model_flops(m, real_tokens: int, sum_sq_lengths: int) -> float:
    # The formula utils/metrics.py held before it moved (an independent reference).
    head_dim = m.hidden_size // m.num_attention_heads
    qkv = m.hidden_size * (m.num_attention_heads + 2 * m.num_query_groups) * head_dim
    per_layer = qkv + m.hidden_size * m.hidden_size + 3 * m.hidden_size * m.ffn_hidden_size
    return 6.0 * m.num_layers * per_layer * real_tokens + 6.0 * m.num_layers * m.hidden_size * sum_sq_lengths


@pytest.mark.parametrize("preset", ["tiny", "polar_1_8b", "polar_7b"])
def test_model_flops_matches_the_replaced_formula_and_the_planner(preset):
    m = load_config([f"model={preset}"]).model
    lengths = [5, 17, 300]
    tokens, sq = sum(lengths), sum(n * n for n in lengths)
    assert model_flops(m, tokens, sq) == _old_metrics_model_flops(m, tokens, sq)
    # The planner's per-token estimate over the same sequences, less the reward head's h weights.
    counts = count_parameters(m)
    per_seq = [
        estimate_flops(counts.matmul, m.num_layers, m.hidden_size, n).model_per_token * n for n in lengths
    ]
    assert model_flops(m, tokens, sq) == pytest.approx(sum(per_seq) - 6.0 * counts.head * tokens, rel=1e-12)
