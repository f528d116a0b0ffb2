"""Convert between HF checkpoints and megatron_polar checkpoints.

    python -m megatron_polar.convert import-hf --hf-dir BASE_MODEL --output ckpt/base \\
        --reward-token '[UNUSED_TOKEN_130]' --split-token '<|reward|>'
    python -m megatron_polar.convert export-hf --checkpoint runs/x/checkpoints --output out/rm \\
        --format llama --tokenizer BASE_MODEL --dtype bf16

The logic lives in :mod:`megatron_polar.checkpoint.hf_import`, :mod:`~megatron_polar.checkpoint.hf_export`
and :mod:`~megatron_polar.checkpoint.hf_config`; see ``docs/conversion.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from megatron_polar.checkpoint import manager
from megatron_polar.checkpoint.hf_config import model_overrides
from megatron_polar.checkpoint.hf_export import export_hf
from megatron_polar.checkpoint.hf_import import import_hf
from megatron_polar.checkpoint.hf_io import ConversionError
from megatron_polar.config import from_yaml
from megatron_polar.config.schema import Precision, values
from megatron_polar.utils.logging import get_logger, setup_logging

log = get_logger("megatron_polar.convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megatron_polar.convert", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    imp = sub.add_parser("import-hf", help="HF safetensors directory -> megatron_polar checkpoint")
    imp.add_argument("--hf-dir", required=True, help="HF checkpoint directory (config.json + safetensors)")
    imp.add_argument("--output", required=True, help="checkpoint root to write (iter_0000000 inside)")
    imp.add_argument("--reward-token", help="scored token: an id or a token string (default: config.json)")
    imp.add_argument("--split-token", help="reference/candidate split token: an id or a token string")
    imp.add_argument("--tokenizer", help="tokenizer dir or file to look token strings up (default: --hf-dir)")
    imp.add_argument(
        "--head-init", choices=["zeros", "normal"], default="zeros", help="head without a source"
    )
    imp.add_argument("--dtype", choices=("auto", *values(Precision)), default="auto", help="weights dtype")
    imp.add_argument("--seed", type=int, default=1234, help="seed of --head-init normal")
    imp.add_argument("--device", choices=["cpu", "auto"], default="cpu")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --output")

    exp = sub.add_parser("export-hf", help="megatron_polar checkpoint (any layout) -> HF directory")
    exp.add_argument("--checkpoint", required=True, help="checkpoint directory or root (newest complete)")
    exp.add_argument("--output", required=True, help="HF directory to create")
    exp.add_argument(
        "--format",
        choices=["llama", "internlm2"],
        default="llama",
        help="llama: stock LlamaForSequenceClassification; internlm2: the released POLAR layout "
        "(InternLM2ForRewardModel) with this project's remote code, for trust_remote_code, vLLM, SGLang, lmdeploy",
    )
    exp.add_argument(
        "--tokenizer",
        help="tokenizer directory, tokenizer.json or tokenizer.model (a .model also gets a checked tokenizer.json)",
    )
    exp.add_argument("--dtype", choices=values(Precision), help="default: the checkpoint's precision")
    exp.add_argument("--max-shard-size", default="4GB", help="safetensors shard size (e.g. 4GB, 500MB)")
    exp.add_argument("--pad-token-id", type=int, help="pad id for last-token pooling (llama format)")
    exp.add_argument("--reward-token-id", type=int, help="override the checkpoint's model.reward_token_id")
    exp.add_argument("--split-token-id", type=int, help="override the checkpoint's model.split_token_id")
    exp.add_argument("--device", choices=["cpu", "auto"], default="cpu")
    exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        if args.command == "import-hf":
            path = import_hf(
                args.hf_dir,
                args.output,
                reward_token=args.reward_token,
                split_token=args.split_token,
                tokenizer=args.tokenizer,
                head_init=args.head_init,
                dtype=args.dtype,
                seed=args.seed,
                overwrite=args.overwrite,
                device=args.device,
            )
            model = from_yaml(manager.read_config_yaml(path)).model
            print(f"wrote {path}")
            print(
                f"train from it with: checkpoint.pretrained={path.parent} {' '.join(model_overrides(model))}"
            )
        else:
            path = export_hf(
                args.checkpoint,
                args.output,
                fmt=args.format,
                tokenizer=args.tokenizer,
                dtype=args.dtype,
                max_shard_size=args.max_shard_size,
                pad_token_id=args.pad_token_id,
                reward_token_id=args.reward_token_id,
                split_token_id=args.split_token_id,
                overwrite=args.overwrite,
                device=args.device,
            )
            print(f"wrote {path}")
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # the guard matters: dist_checkpointing's save starts a multiprocessing manager
    sys.exit(main())
