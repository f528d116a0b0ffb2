"""Parameter counts against hand arithmetic (no LM output layer; head = Linear(h, 1, bias=False))."""

from __future__ import annotations

from megatron_polar.config.loader import load_config
from megatron_polar.planning.params import count_parameters, stage_parameters


def _counts(preset: str):
    return count_parameters(load_config([f"model={preset}"]).model)


def test_polar_7b_counts():
    c = _counts("polar_7b")
    h, ffn, kv, d = 4096, 14336, 8, 128
    per_layer = 2 * h + h * (h + 2 * kv * d) + h * h + h * 2 * ffn + ffn * h
    assert per_layer == 218_112_000
    assert c.embedding == 92544 * 4096 == 379_060_224
    assert c.per_layer == per_layer
    assert c.total == 379_060_224 + 32 * 218_112_000 + 4096 + 4096 == 7_358_652_416
    assert c.matmul == 32 * (per_layer - 2 * h) + h


def test_polar_1_8b_counts():
    c = _counts("polar_1_8b")
    h, ffn, kv, d = 2048, 8192, 8, 128
    per_layer = 2 * h + h * (h + 2 * kv * d) + h * h + h * 2 * ffn + ffn * h
    assert per_layer == 62_918_656
    assert c.total == 92544 * 2048 + 24 * per_layer + 2 * h == 1_699_581_952


def test_tiny_counts():
    c = _counts("tiny")  # h 64, 4 heads of 16, 2 KV groups, ffn 176, vocab 512, 4 layers
    assert c.per_layer == 128 + 64 * (64 + 64) + 64 * 64 + 64 * 352 + 176 * 64 == 46_208
    assert c.total == 512 * 64 + 4 * 46_208 + 64 + 64 == 217_728


def test_stage_split_tp2_pp2():
    c = _counts("tiny")
    first, last = stage_parameters(c, tp=2, pp=2)
    assert (first.layers, first.has_embedding, first.has_head) == (2, True, False)
    assert (last.layers, last.has_embedding, last.has_head) == (2, False, True)
    assert first.total + last.total == c.total
    # norms replicated over TP, linear layers and the vocabulary-parallel embedding split in two
    assert first.per_gpu == 512 * 64 // 2 + 2 * (128 + 46_080 // 2) == 62_720
    assert last.per_gpu == 2 * (128 + 46_080 // 2) + 64 + 64 == 46_464
