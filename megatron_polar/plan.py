"""Plan a process layout: ``python -m megatron_polar.plan [flags] [hydra overrides...]``.

Examples::

    python -m megatron_polar.plan --model polar_7b --gpus 912 --tp 2 --sp --seq-length 32768 --recompute full
    python -m megatron_polar.plan --gpus 912 model=polar_7b parallel=h800_7b data.seq_length=32768 --json
    python -m megatron_polar.plan --gpus 16 --brief --config model=tiny   # one line, for launch scripts

Flags override the composed configuration (``conf/`` + overrides). Exit status: 0, or 2 when the layout
cannot start (it does not divide the GPUs, heads or layers; or the configuration is invalid), or 3 with
``--strict`` when it does not fit the GPU memory.
"""

from __future__ import annotations

import argparse
import sys

from megatron_polar.config.loader import ConfigError, load_config
from megatron_polar.planning import Hardware, plan_layout
from megatron_polar.planning.report import format_brief, format_json, format_table


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
    ap.add_argument("--layout", choices=["packed", "padded"])
    ap.add_argument("--precision", choices=["bf16", "fp16", "fp32"])
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
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--brief", action="store_true", help="one key=value line (launch scripts)")
    ap.add_argument("--strict", action="store_true", help="exit 3 when the layout does not fit")
    return ap


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
    plan = plan_layout(
        cfg,
        args.gpus,
        hardware,
        tokens=args.tokens,
        mfu=args.mfu,
        attn_length=args.attn_length,
        flash_attention=False if args.no_flash_attn else None,
        overhead_gb=args.overhead_gb,
    )
    render = format_json if args.json else format_brief if args.brief else format_table
    print(render(plan))
    if plan.errors:
        return 2
    if args.strict and not plan.fits:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
