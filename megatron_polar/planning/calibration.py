"""Measured steps (``--calibrate FILE``): the JSON format and the fit of the efficiency scale.

A file holds one measurement object, or ``{"measurements": [...]}`` with several (say a ~1B shape at
8k- and 32k-token rows, as ``make gpu-smoke`` measures). One measurement::

    {
      "format": "polar-step/1",
      "model": {"num_layers": 16, "hidden_size": 2048, "num_attention_heads": 16,
                "num_query_groups": 8, "ffn_hidden_size": 5632, "vocab_size": 92544},
      "gpu": {"name": "H200", "count": 1, "peak_tflops": 989, "nvlink_gb_s": 900},
      "layout": {"tp": 1, "pp": 1, "vpp": null, "dp": 1, "sequence_parallel": false,
                 "recompute": "none", "fp8": false, "tp_comm_overlap": false,
                 "micro_batch_tokens": 8192, "num_micro_batches": 4},
      "attn_length": 2731.0,
      "tokens_per_s": 41000.0,
      "mfu": 0.38,
      "peak_memory_gb": 31.5
    }

``model`` may instead be ``"preset": "<conf/model name>"`` (resolved by the caller). ``tokens_per_s``
counts processed tokens of the whole job (all GPUs, padding included) in steady state; ``attn_length``
is the token-weighted attended length of the measured rows (``2 * sum of causal pairs / tokens``; for
rows of one causal sequence of ``s`` tokens, ``s``). ``mfu`` and ``peak_memory_gb`` are reported back,
not fitted. ``gpu`` fields other than ``count`` default to an H800's.

:func:`measurement_record` is the one writer of this format: ``benchmarks/gpu_smoke.py`` builds its
``measurements`` with it, and it checks each record with the same parser ``--calibrate`` uses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

from megatron_polar.config.schema import ModelConfig
from megatron_polar.planning.performance import GpuSpec, Layout, fit_scale, predict_step
from megatron_polar.utils.errors import CalibrationError

FORMAT = "polar-step/1"
_MODEL_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size")


@dataclass(frozen=True)
class Measurement:
    """One measured step, parsed."""

    model: ModelConfig
    layout: Layout
    gpu: GpuSpec
    attn_length: float
    tokens_per_s: float
    mfu: float | None = None
    peak_memory_gb: float | None = None

    def fitted_scale(self) -> float:
        return fit_scale(
            self.tokens_per_s,
            lambda sc: predict_step(self.model, self.layout, self.attn_length, self.gpu, sc),
        )


def _need(obj: dict, key: str, where: str) -> object:
    if key not in obj:
        raise CalibrationError(f"{where}: missing field {key!r}")
    return obj[key]


def parse_measurement(
    obj: dict, where: str, presets: Callable[[str], ModelConfig] | None = None
) -> Measurement:
    """Validate one measurement object (``where`` names it in errors: ``file:measurements[i]``)."""
    if not isinstance(obj, dict):
        raise CalibrationError(f"{where}: a measurement must be a JSON object")
    if obj.get("format", FORMAT) != FORMAT:
        raise CalibrationError(f"{where}.format: expected {FORMAT!r}, got {obj.get('format')!r}")
    if "preset" in obj:
        if presets is None:
            raise CalibrationError(f"{where}.preset: no preset resolver; give the model's shape")
        model = presets(str(obj["preset"]))
    else:
        m = _need(obj, "model", where)
        try:
            model = ModelConfig(
                **{k: int(_need(m, k, f"{where}.model")) for k in _MODEL_KEYS},
                vocab_size=int(m.get("vocab_size", 0)),
            )
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"{where}.model: {exc}") from None
    lay = _need(obj, "layout", where)
    known = {f.name for f in fields(Layout)}
    unknown = set(lay) - known
    if unknown:
        raise CalibrationError(f"{where}.layout: unknown field(s) {sorted(unknown)}")
    layout = Layout(**lay)
    gpu_obj = dict(obj.get("gpu", {}))
    count = int(gpu_obj.pop("count", layout.gpus))
    if count != layout.gpus:
        raise CalibrationError(f"{where}.gpu.count={count} but the layout spans {layout.gpus} GPUs")
    gpu_obj.pop("name", None)
    try:
        gpu = GpuSpec(**gpu_obj)
    except TypeError as exc:
        raise CalibrationError(f"{where}.gpu: {exc}") from None
    values = {}
    for key in ("attn_length", "tokens_per_s"):
        v = _need(obj, key, where)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CalibrationError(f"{where}.{key}: expected a positive number, got {v!r}")
        values[key] = float(v)
    return Measurement(
        model,
        layout,
        gpu,
        values["attn_length"],
        values["tokens_per_s"],
        obj.get("mfu"),
        obj.get("peak_memory_gb"),
    )


def load_measurements(path: str, presets: Callable[[str], ModelConfig] | None = None) -> list[Measurement]:
    """Read ``path`` (one measurement or ``{"measurements": [...]}``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise CalibrationError(f"{path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    items = data.get("measurements", [data]) if isinstance(data, dict) else None
    if not items:
        raise CalibrationError(f"{path}: expected a measurement object or a non-empty 'measurements' list")
    return [parse_measurement(o, f"{path}:measurements[{i}]", presets) for i, o in enumerate(items)]


def fit(measurements: list[Measurement]) -> float:
    """The scale that best fits all measurements (geometric mean of each one's exact fit)."""
    scales = [m.fitted_scale() for m in measurements]
    return math.exp(sum(math.log(s) for s in scales) / len(scales))


def attended_length(segment_lengths: Iterable[int]) -> float:
    """``attn_length`` of rows made of causal segments: ``2 * causal pairs / processed tokens``.

    Counted as the step model counts them (``l**2 / 2`` pairs per segment of ``l`` tokens, as in
    :func:`megatron_polar.planning.lengths.length_stats`). Give every segment the kernel processes,
    the padding tail of a packed row included, so that the tokens match ``tokens_per_s``.
    """
    lengths = [int(n) for n in segment_lengths]
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"segment lengths must be positive and non-empty, got {lengths[:8]}")
    return sum(n * n for n in lengths) / sum(lengths)


def measurement_record(
    model: ModelConfig,
    layout: Layout,
    attn_length: float,
    tokens_per_s: float,
    *,
    gpu: GpuSpec = GpuSpec(),
    gpu_name: str | None = None,
    mfu: float | None = None,
    peak_memory_gb: float | None = None,
) -> dict:
    """One measured step as a ``polar-step/1`` object, checked by the parser that ``--calibrate`` uses."""
    record = {
        "format": FORMAT,
        "model": {k: int(getattr(model, k)) for k in (*_MODEL_KEYS, "vocab_size")},
        "gpu": {"name": gpu_name, "count": layout.gpus, **asdict(gpu)},
        "layout": asdict(layout),
        "attn_length": float(attn_length),
        "tokens_per_s": float(tokens_per_s),
        "mfu": None if mfu is None else float(mfu),
        "peak_memory_gb": None if peak_memory_gb is None else float(peak_memory_gb),
    }
    # A record the reader would refuse fails here, where it is made, not in a later --calibrate.
    parse_measurement(json.loads(json.dumps(record)), "measurement_record")
    return record
