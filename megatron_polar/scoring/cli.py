"""Command-line options shared by ``score``, ``evaluate`` and ``serve``: model, tokenizer, batching."""

from __future__ import annotations

import argparse

import torch

from megatron_polar.checkpoint.model_loading import is_hf_directory
from megatron_polar.config.schema import Precision, TransformerImpl, values
from megatron_polar.data.tokenizer import DEFAULT_REWARD_TOKEN, DEFAULT_SPLIT_TOKEN, load_tokenizer
from megatron_polar.scoring.scorer import PolarScorer
from megatron_polar.utils.logging import setup_logging


def add_scorer_args(parser: argparse.ArgumentParser) -> None:
    """Options that build a :class:`PolarScorer`."""
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        required=True,
        help="megatron_polar checkpoint (iter_* dir or its root) or an exported HF directory (detected)",
    )
    g.add_argument(
        "--tokenizer",
        default=None,
        help="sentencepiece .model, tokenizer.json, or a dir (default for an HF directory: its own)",
    )
    g.add_argument(
        "--split-token", default=DEFAULT_SPLIT_TOKEN, help="split token name (default: %(default)s)"
    )
    g.add_argument(
        "--reward-token", default=DEFAULT_REWARD_TOKEN, help="reward token name (default: %(default)s)"
    )
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument("--precision", default=None, choices=values(Precision), help="default: bf16 GPU, fp32 CPU")
    g.add_argument(
        "--batch-tokens", type=int, default=16384, help="token budget per micro-batch (rows x length)"
    )
    g.add_argument(
        "--max-length", type=int, default=None, help="longest sequence (default: min(16384, model))"
    )
    g.add_argument(
        "--transformer-impl",
        default=None,
        choices=values(TransformerImpl),
        help="layer spec (default: the checkpoint's, auto for an HF directory); local takes shared-prefix "
        "rows on a GPU too",
    )
    g.add_argument(
        "--share-prefix",
        default="auto",
        choices=("auto", "on", "off"),
        help="score sequences with a common prefix (candidates of one prompt and reference) in shared rows "
        "that compute the prefix once; auto (the default) is on, with either attention spec",
    )
    g.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    g.add_argument("--normalize", default=None, metavar="CALIB_JSON", help="apply this reward normaliser")
    g.add_argument("--log-level", default="INFO")


def scorer_from_args(args: argparse.Namespace, max_batch_sequences: int = 64) -> PolarScorer:
    """Build the scorer the parsed options describe."""
    setup_logging(args.log_level)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = None
    if args.tokenizer is not None:
        tokenizer = load_tokenizer(
            args.tokenizer, split_token=args.split_token, reward_token=args.reward_token
        )
    elif not is_hf_directory(args.model):
        raise SystemExit(f"error: --tokenizer is required: {args.model} is not an HF directory")
    options = {
        "batch_tokens": args.batch_tokens,
        "max_batch_sequences": max_batch_sequences,
        "share_prefix": {"auto": None, "on": True, "off": False}[args.share_prefix],
    }
    if args.max_length is not None:
        options["max_length"] = args.max_length
    return PolarScorer.load(
        args.model,
        tokenizer,
        device=args.device,
        precision=args.precision,
        normalizer=args.normalize,
        transformer_impl=args.transformer_impl,
        **options,
    )
