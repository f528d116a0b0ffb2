"""The step model's terms against hand arithmetic; calibration; the ranking order."""

from __future__ import annotations

import json

import pytest

from megatron_polar import plan as plan_cli
from megatron_polar.config import load_config
from megatron_polar.config.schema import ModelConfig
from megatron_polar.planning.calibration import CalibrationError, fit, load_measurements
from megatron_polar.planning.layout import Hardware
from megatron_polar.planning.performance import (
    ANCHOR_LAYOUT,
    ANCHOR_MFU,
    ANCHOR_MODEL,
    H100,
    GpuSpec,
    Layout,
    anchor_scale,
    predict_step,
)
from megatron_polar.planning.ranking import rank_layouts

# POLAR-7B shapes: every GEMM's smallest dimension is >= 4096 at TP1 -> efficiency 0.78.
M7 = ModelConfig(
    name="m7",
    num_layers=32,
    hidden_size=4096,
    num_attention_heads=32,
    num_query_groups=8,
    ffn_hidden_size=14336,
    vocab_size=92544,
)
GPU = GpuSpec()  # 989 TFLOP/s, NVLink 400 GB/s, IB 50 GB/s, HBM 3350 GB/s
T = 32768
LINEAR = 4096 * 6144 + 4096 * 4096 + 4096 * 28672 + 14336 * 4096  # qkv, out, fc1, fc2


def test_gemm_and_attention_terms_by_hand():
    st = predict_step(M7, Layout(micro_batch_tokens=T), 5000.0, GPU, scale=1.0)
    assert st.gemm == pytest.approx(2 * LINEAR * T * 3 * 32 / (989e12 * 0.78))
    assert st.attention == pytest.approx(2 * 4096 * 5000 * T * 3 * 32 / (989e12 * 0.45))
    assert st.elementwise == pytest.approx(34 * 4096 * T * 3 * 32 / 3350e9)
    assert st.tp_comm == st.pp_comm == st.bubble == st.dp_comm == 0
    # model FLOPs: 6N (linear weights + the head) + 6 l h s per token
    assert st.model_flops_per_step == pytest.approx((6 * (32 * LINEAR + 4096) + 6 * 32 * 4096 * 5000) * T)


def test_recompute_fp8_and_scale():
    base = predict_step(M7, Layout(micro_batch_tokens=T), 5000.0, GPU, 1.0)
    full = predict_step(M7, Layout(micro_batch_tokens=T, recompute="full"), 5000.0, GPU, 1.0)
    sel = predict_step(M7, Layout(micro_batch_tokens=T, recompute="selective"), 5000.0, GPU, 1.0)
    fp8 = predict_step(M7, Layout(micro_batch_tokens=T, fp8=True), 5000.0, GPU, 1.0)
    half = predict_step(M7, Layout(micro_batch_tokens=T), 5000.0, GPU, 0.5)
    assert full.gemm == pytest.approx(base.gemm * 4 / 3) and full.attention == pytest.approx(
        base.attention * 4 / 3
    )
    assert sel.gemm == pytest.approx(base.gemm) and sel.attention == pytest.approx(base.attention * 4 / 3)
    assert fp8.gemm == pytest.approx(base.gemm / 1.6) and fp8.attention == pytest.approx(base.attention)
    assert half.gemm == pytest.approx(2 * base.gemm) and half.attention == pytest.approx(2 * base.attention)


def test_tensor_parallel_communication_with_and_without_overlap():
    lay = Layout(tp=2, sequence_parallel=True, micro_batch_tokens=T)
    st = predict_step(M7, lay, 5000.0, GPU, 1.0)
    # 4 collectives per pass, each (tp-1)/tp of a bf16 [T, h] at 400/2 GB/s x 0.8, 3 passes, 32 layers
    want = 4 * (2 * T * 4096) * 0.5 / (200e9 * 0.8) * 3 * 32
    assert st.tp_comm == pytest.approx(want)
    over = predict_step(
        M7, Layout(tp=2, sequence_parallel=True, micro_batch_tokens=T, tp_comm_overlap=True), 5000.0, GPU, 1.0
    )
    assert over.tp_comm == pytest.approx(max(0.2 * want, want - over.gemm))
    h100 = predict_step(M7, lay, 5000.0, GpuSpec(nvlink_gb_s=900.0), 1.0)
    assert h100.tp_comm == pytest.approx(want * 400 / 900)


def test_pipeline_bubble_and_data_parallel_reduce():
    lay = Layout(pp=4, vpp=2, dp=4, micro_batch_tokens=T, num_micro_batches=8)
    st = predict_step(M7, lay, 5000.0, GPU, 1.0)
    busy = st.gemm + st.attention + st.elementwise + st.tp_comm + st.pp_comm
    assert st.bubble == pytest.approx(busy * 3 / (2 * 8))
    assert st.pp_comm > 0
    # DP: fp32 reduce-scatter + bf16 all-gather of the stage's parameters, minus one micro-batch of overlap.
    params = (32 * LINEAR + 92544 * 4096) / 4
    raw = 6 * params * 3 / 4 / (50e9 * 0.8)
    assert st.dp_comm == pytest.approx(max(0.0, raw - busy / 8))
    assert predict_step(M7, Layout(micro_batch_tokens=T), 5000.0, GPU, 1.0).dp_comm == 0


def test_default_scale_reproduces_the_published_anchor():
    st = predict_step(ANCHOR_MODEL, ANCHOR_LAYOUT, 4096.0, H100)
    assert st.mfu(ANCHOR_LAYOUT.gpus, H100.peak_tflops) == pytest.approx(ANCHOR_MFU, rel=1e-6)
    assert 0.3 < anchor_scale() < 1.5


def _measurement(tokens_per_s: float) -> dict:
    return {
        "format": "polar-step/1",
        "model": {
            "num_layers": 16,
            "hidden_size": 2048,
            "num_attention_heads": 16,
            "num_query_groups": 8,
            "ffn_hidden_size": 5632,
            "vocab_size": 92544,
        },
        "gpu": {"name": "H200", "count": 1, "peak_tflops": 989, "nvlink_gb_s": 900},
        "layout": {"tp": 1, "micro_batch_tokens": 8192, "num_micro_batches": 4},
        "attn_length": 2731.0,
        "tokens_per_s": tokens_per_s,
        "mfu": 0.3,
        "peak_memory_gb": 30.0,
    }


def test_calibration_recovers_the_scale_and_moves_the_projection(tmp_path):
    m = load_measurements(str(_write(tmp_path / "one.json", _measurement(1.0))))[0]
    target = predict_step(m.model, m.layout, m.attn_length, m.gpu, 0.4).tokens_per_s
    path = _write(tmp_path / "cal.json", {"measurements": [_measurement(target)]})
    assert fit(load_measurements(str(path))) == pytest.approx(0.4, rel=1e-6)

    args = [
        "--model",
        "polar_7b",
        "--gpus",
        "912",
        "--tp",
        "2",
        "--sp",
        "--seq-length",
        "32768",
        "--recompute",
        "full",
        "--global-batch",
        "auto",
        "--length-mix",
        "paper",
        "--json",
    ]
    hours = {}
    for name, extra in (("default", []), ("slow", ["--calibrate", str(path)])):
        out = _run_cli(args + extra)
        hours[name] = out["prediction"]["hours"]
        assert out["prediction"]["calibrated"] == bool(extra)
    assert hours["slow"] > hours["default"]  # a slower measured kernel rate predicts a longer run


def test_bad_calibration_files_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"measurements": [\n  {"format": "polar-step/1",}\n]}')
    with pytest.raises(CalibrationError, match=r"bad.json:2: invalid JSON"):
        load_measurements(str(bad))
    m = _measurement(10.0)
    del m["attn_length"]
    with pytest.raises(CalibrationError, match=r"measurements\[0\]: missing field 'attn_length'"):
        load_measurements(str(_write(tmp_path / "m.json", m)))
    m = _measurement(10.0)
    m["layout"]["tensor_parallel"] = 2
    with pytest.raises(CalibrationError, match=r"layout: unknown field"):
        load_measurements(str(_write(tmp_path / "u.json", m)))


def test_ranking_puts_the_obviously_better_layout_first():
    # A model that fits anywhere: no TP traffic, no bubble, no recompute wins.
    cfg = load_config(["model=tiny", "data.seq_length=1024", "data.layout=packed"])
    ranked = rank_layouts(cfg, 8, Hardware(), GpuSpec(), 500.0, global_rows=64)
    best = ranked[0].layout
    assert (best.tp, best.pp, best.dp, best.recompute) == (1, 1, 8, "none")
    labels = [r.layout.label() for r in ranked]
    assert labels.index("TP1 PP1 DP8 rc=full") > 0 and labels.index("TP2 SP PP1 DP4 rc=none") > 0
    rates = [r.tokens_per_s for r in ranked]
    assert rates == sorted(rates, reverse=True)


def test_share_prefix_needs_lengths(capsys):
    assert plan_cli.main(["--model", "polar_7b", "--gpus", "912", "--share-prefix"]) == 2
    assert "--share-prefix needs" in capsys.readouterr().err


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _run_cli(args):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        plan_cli.main(args)
    return json.loads(buf.getvalue())
