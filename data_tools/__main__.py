"""``python -m data_tools {pair,rank,build,merge,add-prefix-lengths,inspect}``: the POLAR data pipeline's command line.

Typical flow::

    python -m data_tools pair rollouts/*.jsonl.zst -o pairs.jsonl --pairs-per-prompt 2 \\
        --holdout-policies llama-7b --holdout-output pairs.holdout.jsonl
    python -m data_tools build pairs.jsonl -o data/pretrain --tokenizer tokenizer.model --workers 8
    python -m data_tools inspect data/pretrain -n 3

Exit status: 0 success; 1 bad input or option value (the message names file:line where there is
one); 2 refusal to overwrite an existing output, or a command-line usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from data_tools.build import BuildConfig, build_dataset
from data_tools.inspect_dataset import inspect, pair_records
from data_tools.loops import LoopConfig
from data_tools.merge import merge_build, merge_pair
from data_tools.pairing import PairConfig, run_pair, run_rank
from data_tools.prefix_lengths import add_prefix_lengths
from data_tools.records import DEFAULT_MAX_LINE_BYTES, InputError, RecordError
from data_tools.sharding import ShardSpec
from megatron_polar.data.pair_dataset import read_manifest
from megatron_polar.data.tokenizer import DEFAULT_REWARD_TOKEN, DEFAULT_SPLIT_TOKEN, load_tokenizer
from megatron_polar.utils.logging import get_logger, setup_logging

logger = get_logger("data_tools")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="stop at the first bad row (naming file:line)")
    p.add_argument(
        "--max-line-bytes",
        type=int,
        default=DEFAULT_MAX_LINE_BYTES,
        help="longer lines are skipped and counted as line_too_long (default: 16 MiB)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _sharding(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-shards",
        type=int,
        default=1,
        help="split the job into N independent shards (processes or SLURM array tasks); "
        "`merge` joins their outputs into the one-process result (default: %(default)s)",
    )
    p.add_argument("--shard-index", type=int, default=0, help="which shard this process runs, 0..N-1")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m data_tools",
        description="POLAR data pipeline: rollouts -> pairs, rankings -> triples, triples -> indexed dataset.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--log-level", default="INFO")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "pair",
        help="policy-pool rollouts -> pre-training triples",
        description="Rows {prompt, policy, response}: reference and chosen from one policy A "
        "(two different responses), rejected from another policy B.",
    )
    p.add_argument("inputs", nargs="+", help="rollout JSONL files (.jsonl, .jsonl.gz, .jsonl.zst)")
    p.add_argument("-o", "--output", required=True, help="triples JSONL (.gz compresses)")
    p.add_argument(
        "--pairs-per-prompt", type=int, default=1, help="triples per prompt (default: %(default)s)"
    )
    p.add_argument(
        "--allow-policy-repeat",
        action="store_true",
        help="let a policy appear in several pairs of one prompt (default: each at most once)",
    )
    p.add_argument("--holdout-policies", default="", help="comma-separated policies kept out of --output")
    p.add_argument("--holdout-output", help="triples involving a held-out policy go here")
    p.add_argument(
        "--seed", type=int, default=1234, help="seed of every random choice (default: %(default)s)"
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=64,
        help="temporary shards of the group-by-prompt (default: %(default)s)",
    )
    p.add_argument("--tmp-dir", help="where the temporary shards go (default: beside --output)")
    p.add_argument("--no-truncate-loops", action="store_true", help="keep repetition loops in full")
    _sharding(p)
    p.add_argument(
        "--loop-keep", type=int, default=2, help="repetitions of a loop's unit to keep (default: %(default)s)"
    )
    p.add_argument(
        "--loop-min-repeats",
        type=int,
        default=6,
        help="back-to-back repeats that make a loop (default: %(default)s)",
    )
    p.add_argument(
        "--loop-min-chars", type=int, default=256, help="characters a loop must span (default: %(default)s)"
    )
    _common(p)

    p = sub.add_parser(
        "rank",
        help="human-ranked responses -> fine-tuning triples",
        description="Rows {prompt, responses: [best..worst], category?}. first3: reference=1st, "
        "chosen=2nd, rejected=3rd. all: reference=1st and every (i<j) below it as chosen/rejected.",
    )
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--mode", choices=("first3", "all"), default="first3", help="default: %(default)s")
    _common(p)

    p = sub.add_parser("build", help="triples JSONL -> megatron indexed pair dataset + manifest")
    p.add_argument("inputs", nargs="+", help="triples JSONL files (.jsonl, .jsonl.gz, .jsonl.zst)")
    p.add_argument("-o", "--output-prefix", required=True, help="writes <prefix>.bin/.idx/.manifest.json")
    p.add_argument(
        "--tokenizer",
        required=True,
        help="sentencepiece .model, HF tokenizer.json, or a directory (tokenizer_config.json honoured)",
    )
    p.add_argument(
        "--split-token", default=DEFAULT_SPLIT_TOKEN, help="split token name (default: %(default)s)"
    )
    p.add_argument(
        "--reward-token", default=DEFAULT_REWARD_TOKEN, help="reward token name (default: %(default)s)"
    )
    p.add_argument("--split-token-id", type=int, help="overrides --split-token")
    p.add_argument("--reward-token-id", type=int, help="overrides --reward-token")
    p.add_argument("--bos-token", help="BOS by name (default: the tokenizer's own)")
    p.add_argument("--bos-token-id", type=int)
    p.add_argument(
        "--max-length",
        type=int,
        default=16384,
        help="tokens per sequence (default and released: %(default)s)",
    )
    p.add_argument(
        "--max-response-length",
        type=int,
        default=4096,
        help="cap per response (default and released: %(default)s)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="tokenising processes; output is identical for any N"
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=2048,
        help="lines per work unit / shard; does not change the output (default: %(default)s)",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=5,
        help="file:line examples kept per skip reason (default: %(default)s)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tqdm progress bar on stderr (default: when stderr is a terminal)",
    )
    _sharding(p)
    _common(p)

    p = sub.add_parser(
        "merge",
        help="join the shards of a sharded build or pair run into the one-process output",
        description="build: <prefix>.shard-<i>-of-<n>.{bin,idx,manifest.json} -> <prefix>.*; "
        "pair: <out>.shard-<i>-of-<n>.jsonl (+ .done.json) -> <out>. Refuses while any shard is incomplete.",
    )
    p.add_argument("kind", choices=("build", "pair"))
    p.add_argument("-o", "--output", required=True, help="build: the output prefix; pair: the triples JSONL")
    p.add_argument("--holdout-output", help="pair: also join the holdout shards into this file")
    p.add_argument("--num-shards", type=int, required=True)
    p.add_argument("--remove-shards", action="store_true", help="delete the shards once merged")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    p = sub.add_parser(
        "add-prefix-lengths",
        help="add the shared-prefix sidecar (<prefix>.prefix.npy) to a dataset built without it",
        description="One streaming pass over the stored ids writes each pair's shared-prefix length "
        "(what data.share_prefix=true packs by) and lists it in the manifest; written atomically. "
        "Datasets built by this version of `build`/`merge` have it already.",
    )
    p.add_argument("prefix", help="dataset prefix (<prefix>.bin/.idx/.manifest.json)")
    p.add_argument("--overwrite", action="store_true", help="recompute a sidecar the manifest already lists")

    p = sub.add_parser("inspect", help="manifest stats and decoded samples of a built dataset")
    p.add_argument("prefix")
    p.add_argument(
        "-n", "--samples", type=int, help="pairs to show (default: 3 decoded; every pair with --json)"
    )
    p.add_argument("--start", type=int, default=0, help="first pair to show")
    p.add_argument("--tokenizer", help="override the tokenizer path recorded in the manifest")
    p.add_argument("--max-chars", type=int, default=400, help="characters shown per half-sequence")
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per pair: {"pair", "chosen_ids", "rejected_ids"}, the ids the model sees',
    )
    p.add_argument("--manifest", action="store_true", help="print the manifest as JSON instead")
    return ap


def _run(args: argparse.Namespace) -> None:
    if args.command == "pair":
        cfg = PairConfig(
            pairs_per_prompt=args.pairs_per_prompt,
            allow_policy_repeat=args.allow_policy_repeat,
            holdout_policies=frozenset(p for p in args.holdout_policies.split(",") if p),
            seed=args.seed,
            partitions=args.partitions,
            truncate_loops=not args.no_truncate_loops,
            loops=LoopConfig(
                keep=args.loop_keep, min_repeats=args.loop_min_repeats, min_span_chars=args.loop_min_chars
            ),
            strict=args.strict,
            max_line_bytes=args.max_line_bytes,
        )

        stats = run_pair(
            args.inputs,
            args.output,
            cfg,
            args.holdout_output,
            args.tmp_dir,
            args.overwrite,
            ShardSpec(args.shard_index, args.num_shards),
        )
        print(json.dumps(stats.as_dict(), indent=2, ensure_ascii=False))
    elif args.command == "rank":
        stats = run_rank(
            args.inputs,
            args.output,
            mode=args.mode,
            strict=args.strict,
            max_line_bytes=args.max_line_bytes,
            overwrite=args.overwrite,
        )
        print(json.dumps(stats.as_dict(), indent=2, ensure_ascii=False))
    elif args.command == "build":
        tok = load_tokenizer(
            args.tokenizer,
            args.split_token,
            args.reward_token,
            args.split_token_id,
            args.reward_token_id,
            args.bos_token,
            args.bos_token_id,
        )
        cfg = BuildConfig(
            max_length=args.max_length,
            max_response_length=args.max_response_length,
            workers=args.workers,
            chunk_rows=args.chunk_rows,
            strict=args.strict,
            max_line_bytes=args.max_line_bytes,
            max_examples=args.max_examples,
            overwrite=args.overwrite,
            progress=args.progress,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
        )
        manifest = build_dataset(args.inputs, args.output_prefix, tok, cfg)
        print(
            json.dumps(
                {"prefix": args.output_prefix, **manifest["counts"], "tokens": manifest["tokens"]},
                indent=2,
                ensure_ascii=False,
            )
        )
    elif args.command == "merge":
        if args.kind == "build":
            manifest = merge_build(args.output, args.num_shards, args.overwrite, args.remove_shards)
            summary = {"prefix": args.output, **manifest["counts"], "tokens": manifest["tokens"]}
        else:
            summary = merge_pair(
                args.output, args.num_shards, args.holdout_output, args.overwrite, args.remove_shards
            )
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    elif args.command == "add-prefix-lengths":
        print(json.dumps(add_prefix_lengths(args.prefix, args.overwrite), indent=2))
    elif args.command == "inspect":
        if args.manifest:
            print(json.dumps(read_manifest(args.prefix).to_dict(), indent=2, ensure_ascii=False))
        elif args.json:
            for record in pair_records(args.prefix, args.start, args.samples):
                sys.stdout.write(json.dumps(record) + "\n")
        else:
            samples = 3 if args.samples is None else args.samples
            print(inspect(args.prefix, samples, args.tokenizer, args.max_chars, args.start))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        _run(args)
    except FileExistsError as e:
        logger.error("%s", e)
        return 2
    except (RecordError, InputError, ValueError, FileNotFoundError) as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
