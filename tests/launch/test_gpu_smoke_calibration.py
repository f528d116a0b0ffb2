"""gpu_smoke's JSON report is a calibration file: the planner's ``--calibrate`` reads its measured steps.

The GPU is the only thing left out: the figures come from the same ``step_figures`` that the
``shape_1b`` check calls after timing its step, on the same packed THD batch it builds, with a step
time chosen so that the expected efficiency scale is known.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from benchmarks import gpu_smoke
from megatron_polar import plan as plan_cli
from megatron_polar.config import load_config
from megatron_polar.data.batching import collate_packed
from megatron_polar.planning.calibration import (
    CalibrationError,
    load_measurements,
    measurement_record,
    parse_measurement,
)
from megatron_polar.planning.performance import Layout, predict_step

SEQ = 8192
SCALE = 0.55  # the efficiency scale the pretended step time implies


def _plan_json(args: list[str]) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = plan_cli.main(args)
    assert rc in (0, 3), rc
    return json.loads(buf.getvalue())


def _shape_1b_result() -> dict:
    """What check_shape_1b returns for one row length, with a step time the planner can check."""
    cfg = load_config([*gpu_smoke.TINY_GPU, f"data.seq_length={SEQ}", *gpu_smoke.ONE_B])
    batch = collate_packed([gpu_smoke._random_rows(SEQ, 1000, 30000, 0)], SEQ, thd=True)
    draft = gpu_smoke.step_figures(cfg, batch, 1.0, 3 * 2**30, "NVIDIA H200")["measurement"]
    lay, gpu = Layout(**draft["layout"]), gpu_smoke.gpu_spec("NVIDIA H200")
    m = parse_measurement(draft, "draft")
    elapsed = SEQ / predict_step(m.model, lay, draft["attn_length"], gpu, SCALE).tokens_per_s
    figures = gpu_smoke.step_figures(cfg, batch, elapsed, 3 * 2**30, "NVIDIA H200")
    return {"measurements": [figures.pop("measurement")], f"seq{SEQ}": {"measured": figures}}


def test_report_feeds_the_planner_calibration(tmp_path):
    results = [
        {"name": "versions", "status": "ok", "seconds": 1.0, "figures": {"torch": "2.9"}},
        {"name": "shape_1b", "status": "ok", "seconds": 60.0, "figures": _shape_1b_result()},
    ]
    out = tmp_path / "gpu_smoke.json"
    gpu_smoke.write_json_atomic(out, gpu_smoke.build_report(results))

    [m] = load_measurements(str(out))
    assert m.layout.micro_batch_tokens == SEQ and m.layout.gpus == 1
    assert m.model.hidden_size == 2048 and m.model.num_layers == 16 and m.model.vocab_size == 92544
    assert m.gpu.hbm_gb_s == 4800.0 and m.gpu.nvlink_gb_s == 900.0
    # 1000-token sequences packed into an 8192-token row (8 of them) and a 192-token padding tail.
    assert m.attn_length == pytest.approx((8 * 1000**2 + 192**2) / SEQ)
    assert m.peak_memory_gb == pytest.approx(3.0)
    assert m.fitted_scale() == pytest.approx(SCALE, rel=1e-6)

    base = ["--gpus", "1", "--json", *gpu_smoke.ONE_B, f"data.seq_length={SEQ}", "train.precision=bf16"]
    default = _plan_json(base)["prediction"]
    calibrated = _plan_json([*base, "--calibrate", str(out)])["prediction"]
    assert calibrated["calibrated"] and not default["calibrated"]
    assert calibrated["efficiency_scale"] == pytest.approx(SCALE, rel=1e-6)
    assert calibrated["efficiency_scale"] != pytest.approx(default["efficiency_scale"], rel=1e-3)


def test_a_report_without_a_measured_step_is_refused_by_name(tmp_path):
    failed = [{"name": "shape_1b", "status": "failed", "seconds": 5.0, "error": "RuntimeError: no GPU"}]
    out = tmp_path / "gpu_smoke.json"
    gpu_smoke.write_json_atomic(out, gpu_smoke.build_report(failed))
    assert json.loads(out.read_text())["measurements"] == []
    with pytest.raises(CalibrationError, match="gpu_smoke.json: expected a measurement"):
        load_measurements(str(out))


def test_the_writer_refuses_what_the_reader_would_refuse():
    cfg = load_config(gpu_smoke.ONE_B)
    with pytest.raises(CalibrationError, match="tokens_per_s: expected a positive number"):
        measurement_record(cfg.model, Layout(), 4096.0, 0.0)
