"""Plan a process layout: ``python -m megatron_polar.plan [flags] [hydra overrides...]``.

Examples::

    python -m megatron_polar.plan --model polar_7b --gpus 912 --tp 2 --sp --seq-length 32768 --recompute full
    python -m megatron_polar.plan --gpus 912 model=polar_7b parallel=h800_7b data.seq_length=32768 --json
    python -m megatron_polar.plan --gpus 16 --brief --config model=tiny   # one line, for launch scripts

    python -m megatron_polar.plan --model polar_7b --gpus 912 --length-mix paper --share-prefix --rank
    python -m megatron_polar.plan --model polar_7b --gpus 912 --dataset data/pretrain --share-prefix \
        --calibrate gpu_smoke.json --rank

``--dataset`` / ``--length-mix`` take the attended length from the data (token-weighted E[L^2]/E[L],
or with ``--share-prefix`` the shared-prefix count); ``--rank`` lists the layouts that fit, fastest first,
by the step model of :mod:`megatron_polar.planning.performance`; ``--calibrate`` fits its efficiency
scale to a measured step (format: :mod:`megatron_polar.planning.calibration`).

Flags override the composed configuration (``conf/`` + overrides). Exit status: 0, or 2 when the layout
cannot start (it does not divide the GPUs, heads or layers; or the configuration is invalid), or 3 with
``--strict`` when it does not fit the GPU memory.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from megatron_polar.config.loader import load_config
from megatron_polar.config.schema import DataLayout, Precision, values
from megatron_polar.data.pair_dataset import (
    DatasetError,
    add_prefix_lengths_command,
    open_pair_dataset,
    shared_prefix_length,
)
from megatron_polar.planning import Hardware, plan_layout
from megatron_polar.planning.calibration import CalibrationError, fit, load_measurements
from megatron_polar.planning.lengths import LengthStats, length_stats, paper_length_mix
from megatron_polar.planning.performance import GpuSpec, anchor_scale, predict_step
from megatron_polar.planning.ranking import format_ranking, layout_of, rank_layouts
from megatron_polar.planning.report import format_brief, format_table
from megatron_polar.utils.errors import ConfigError
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

PAPER_7B_BATCH_PAIRS = 4343  # the paper's batch for POLAR-7B (appendix A.1.2)
PACKING_EFFICIENCY = 0.98  # non-padding share of packed rows (published packers reach >= 98%)


def dataset_lengths(prefix: str, sample: int) -> LengthStats:
    """Length statistics of a built dataset from its length index and shared-prefix sidecar.

    Both are memory-mapped, so every pair counts and no token is read. A dataset built before the
    sidecar existed falls back to reading the ids of up to ``sample`` evenly spaced pairs for their
    shared prefixes and carrying the sample's ratios over to the whole set (the unshared totals stay
    exact); ``data_tools add-prefix-lengths`` makes it exact.
    """
    ds = open_pair_dataset(prefix)
    lengths = np.asarray(ds.pair_lengths(copy=False), dtype=np.int64)
    if ds.has_prefix_lengths:
        return length_stats(lengths[:, 0], lengths[:, 1], np.asarray(ds.prefix_lengths(), dtype=np.int64))
    n = len(lengths)
    log.warning(
        "%s has no shared-prefix sidecar: estimating shared prefixes from %d sampled pairs (exact with `%s`)",
        prefix,
        min(n, sample),
        add_prefix_lengths_command(prefix),
    )
    picks = np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64))
    prefix_len = np.array([shared_prefix_length(*ds.pair(int(i))) for i in picks])
    sampled = length_stats(lengths[picks, 0], lengths[picks, 1], prefix_len)
    full = length_stats(lengths[:, 0], lengths[:, 1], np.zeros(n))
    return LengthStats(
        pairs=n,
        tokens=full.tokens,
        attention_pairs=full.attention_pairs,
        shared_tokens=full.tokens * sampled.token_ratio,
        shared_attention_pairs=full.attention_pairs
        * sampled.shared_attention_pairs
        / sampled.attention_pairs,
    )


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """Translate the convenience flags into Hydra overrides (applied after the positional ones)."""
    out = []
    if args.model:
        out.insert(0, f"model={args.model}")  # a group choice: before key overrides that refine it
    simple = {
        "tp": "parallel.tensor_model_parallel_size",
        "pp": "parallel.pipeline_model_parallel_size",
        "vpp": "parallel.virtual_pipeline_model_parallel_size",
        "micro_batch": "train.micro_batch_size",
        "global_batch": "train.global_batch_size",
        "seq_length": "data.seq_length",
        "layout": "data.layout",
        "precision": "train.precision",
    }
    for attr, key in simple.items():
        value = getattr(args, attr)
        if value is not None:
            out.append(f"{key}={value}")
    if args.sp is not None:
        out.append(f"parallel.sequence_parallel={str(args.sp).lower()}")
    if args.recompute is not None:
        if args.recompute == "none":
            out += ["model.recompute_granularity=null", "model.recompute_method=null"]
        else:
            out.append(f"model.recompute_granularity={args.recompute}")
            if args.recompute == "full" and args.recompute_method is None:
                out.append("model.recompute_method=uniform")
    if args.recompute_method is not None:
        out.append(f"model.recompute_method={args.recompute_method}")
    if args.recompute_num_layers is not None:
        out.append(f"model.recompute_num_layers={args.recompute_num_layers}")
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m megatron_polar.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for megatron_polar.train")
    ap.add_argument("--config", nargs="+", default=[], metavar="OVERRIDE", help="more Hydra overrides")
    ap.add_argument("--gpus", type=int, default=8, help="world size (GPUs in the job)")
    ap.add_argument("--model", help="model preset (conf/model/<name>.yaml)")
    ap.add_argument("--tp", type=int)
    ap.add_argument("--pp", type=int)
    ap.add_argument("--vpp", type=int)
    ap.add_argument("--sp", action=argparse.BooleanOptionalAction, default=None, help="sequence parallelism")
    ap.add_argument("--micro-batch", type=int)
    ap.add_argument("--global-batch", help="integer or auto")
    ap.add_argument("--seq-length", type=int)
    ap.add_argument("--layout", choices=values(DataLayout))
    ap.add_argument("--precision", choices=values(Precision))
    ap.add_argument("--recompute", choices=["full", "selective", "none"])
    ap.add_argument("--recompute-method", choices=["uniform", "block"])
    ap.add_argument("--recompute-num-layers", type=int)
    ap.add_argument("--tokens", type=float, help="tokens to train on (default: the paper's for its presets)")
    ap.add_argument(
        "--mfu", type=float, default=0.27, help="assumed model FLOPs utilisation (paper 7B: ~0.27)"
    )
    ap.add_argument(
        "--attn-length", type=int, help="mean attended sequence length (packed: one POLAR sequence)"
    )
    ap.add_argument("--no-flash-attn", action="store_true", help="unfused attention (keeps s x s scores)")
    ap.add_argument("--gpu-name", default="H800")
    ap.add_argument("--gpu-memory-gb", type=float, default=80.0)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense BF16 peak per GPU")
    ap.add_argument("--nvlink-gb-s", type=float, default=400.0, help="NVLink bandwidth per GPU (H100: 900)")
    ap.add_argument(
        "--overhead-gb", type=float, default=4.0, help="CUDA context, NCCL buffers, allocator slack"
    )
    data = ap.add_mutually_exclusive_group()
    data.add_argument("--dataset", metavar="PREFIX", help="built dataset: attended length from its pairs")
    data.add_argument("--length-mix", choices=["paper"], help="synthetic lengths of the paper's mix")
    ap.add_argument(
        "--dataset-sample",
        type=int,
        default=20000,
        help="pairs read for shared prefixes when a dataset has no .prefix.npy sidecar",
    )
    ap.add_argument("--share-prefix", action="store_true", help="prompt + reference computed once per pair")
    ap.add_argument("--calibrate", metavar="FILE", help="measured step(s) to fit the efficiency scale")
    ap.add_argument("--rank", action="store_true", help="rank the layouts that fit, fastest first")
    ap.add_argument("--top", type=int, default=10, help="rows of the ranking")
    ap.add_argument("--fp8", action="store_true", help="predict FP8 GEMMs")
    ap.add_argument("--tp-comm-overlap", action="store_true", help="predict TE userbuffer TP overlap")
    ap.add_argument("--ib-gb-s", type=float, default=50.0, help="network bandwidth per GPU (400 Gb/s NIC)")
    ap.add_argument(
        "--global-pairs",
        type=int,
        help=f"pairs per step when the batch is auto (default {PAPER_7B_BATCH_PAIRS})",
    )
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--brief", action="store_true", help="one key=value line (launch scripts)")
    ap.add_argument("--strict", action="store_true", help="exit 3 when the layout does not fit")
    return ap


def _presets(name: str):
    return load_config([f"model={name}"]).model


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    overrides = list(args.overrides) + list(args.config) + _flag_overrides(args)
    try:
        cfg = load_config(overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hardware = Hardware(
        args.gpu_name, args.gpu_memory_gb, args.gpus_per_node, args.peak_tflops, args.nvlink_gb_s
    )
    gpu = GpuSpec(args.peak_tflops, args.nvlink_gb_s, args.ib_gb_s, gpus_per_node=args.gpus_per_node)
    stats = None
    try:
        if args.dataset:
            stats = dataset_lengths(args.dataset, args.dataset_sample)
        elif args.length_mix == "paper":
            stats = length_stats(*paper_length_mix())
    except (DatasetError, OSError, ValueError) as exc:
        print(f"error: --dataset {args.dataset}: {exc}", file=sys.stderr)
        return 2
    if args.share_prefix and stats is None:
        print("error: --share-prefix needs --dataset PREFIX or --length-mix paper", file=sys.stderr)
        return 2
    attn_length = args.attn_length
    tokens = args.tokens
    if stats is not None:
        attn_length = stats.shared_attn_length if args.share_prefix else stats.attn_length
    scale = anchor_scale()
    if args.calibrate:
        try:
            scale = fit(load_measurements(args.calibrate, _presets))
        except CalibrationError as exc:
            print(f"error: --calibrate {exc}", file=sys.stderr)
            return 2
    plan = plan_layout(
        cfg,
        args.gpus,
        hardware,
        tokens=tokens,
        mfu=args.mfu,
        attn_length=None if attn_length is None else round(attn_length),
        flash_attention=False if args.no_flash_attn else None,
        overhead_gb=args.overhead_gb,
    )
    # Tokens the run processes: the paper's count is of unshared sequences; sharing processes fewer.
    run_tokens = plan.tokens
    if run_tokens is not None and args.share_prefix and stats is not None:
        run_tokens = run_tokens * stats.token_ratio
    pair_tokens = (
        (stats.shared_tokens if args.share_prefix else stats.tokens) / stats.pairs if stats else None
    )
    global_rows = None
    if plan.global_batch is None:
        pairs = args.global_pairs or PAPER_7B_BATCH_PAIRS
        per_pair = pair_tokens or 2.0 * (attn_length or plan.attn_length)
        global_rows = math.ceil(pairs * per_pair / (plan.seq_length * PACKING_EFFICIENCY))
    step = predict_step(
        cfg.model, layout_of(plan, global_rows, args.fp8, args.tp_comm_overlap), plan.attn_length, gpu, scale
    )
    prediction = {
        "attn_length": plan.attn_length,
        "share_prefix": args.share_prefix,
        "lengths": None if stats is None else stats.to_dict(),
        "efficiency_scale": scale,
        "calibrated": bool(args.calibrate),
        "step": step.to_dict(),
        "tokens_per_s_per_gpu": step.tokens_per_s / args.gpus,
        "mfu": step.mfu(args.gpus, args.peak_tflops),
        "tokens": run_tokens,
        "hours": None if run_tokens is None else run_tokens / step.tokens_per_s / 3600.0,
    }
    if args.rank:
        ranked = rank_layouts(
            cfg,
            args.gpus,
            hardware,
            gpu,
            float(plan.attn_length),
            global_rows or (plan.global_batch or plan.dp),
            scale,
            args.fp8,
            args.tp_comm_overlap,
            args.overhead_gb,
        )
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "layout": r.layout.label(),
                            "tokens_per_s": r.tokens_per_s,
                            "mfu": r.step.mfu(args.gpus, args.peak_tflops),
                            "memory_gb": r.plan.peak_memory.total / 1e9,
                            "hours": None if run_tokens is None else run_tokens / r.tokens_per_s / 3600.0,
                        }
                        for r in ranked[: args.top]
                    ],
                    indent=2,
                )
            )
        else:
            print(_prediction_header(prediction, args))
            print(format_ranking(ranked, args.gpus, args.peak_tflops, run_tokens, args.top))
        return 0 if ranked else 3
    if args.json:
        data = plan.to_dict()
        data["prediction"] = prediction
        print(json.dumps(data, indent=2))
    elif args.brief:
        print(format_brief(plan))
    else:
        print(format_table(plan))
        print(_prediction_header(prediction, args))
        print(_prediction_lines(prediction))
    if plan.errors:
        return 2
    if args.strict and not plan.fits:
        return 3
    return 0


def _prediction_header(p: dict, args: argparse.Namespace) -> str:
    lines = ["prediction (step model; see megatron_polar/planning/performance.py)"]
    if p["lengths"] is not None:
        ln = p["lengths"]
        lines.append(
            f"  {'lengths':<30} {ln['pairs']:,} pairs, {ln['tokens_per_pair']:,.0f} tokens/pair, "
            f"E[L^2]/E[L] {ln['attn_length']:,.0f}; shared prefix: {ln['shared_tokens_per_pair']:,.0f} "
            f"tokens/pair ({ln['token_ratio']:.3f}x), attended {ln['shared_attn_length']:,.0f}"
        )
    lines.append(
        f"  {'attended length':<30} {p['attn_length']:,} ({'shared prefix' if p['share_prefix'] else 'unshared'})"
    )
    source = "fitted to --calibrate" if p["calibrated"] else "megatron-core's 7.1B/47% anchor"
    lines.append(f"  {'efficiency scale':<30} {p['efficiency_scale']:.3f} ({source})")
    return "\n".join(lines)


def _prediction_lines(p: dict) -> str:
    st = p["step"]
    parts = ", ".join(
        f"{k} {st[k]:.2f}"
        for k in ("gemm", "attention", "elementwise", "tp_comm", "pp_comm", "bubble", "dp_comm")
    )
    lines = [
        f"  {'step (s)':<30} {st['total']:.2f} = {parts}",
        f"  {'throughput':<30} {p['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU, MFU {p['mfu']:.1%}",
    ]
    if p["hours"] is not None:
        lines.append(f"  {'predicted time':<30} {p['hours']:,.1f} h for {p['tokens']:.3g} processed tokens")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
