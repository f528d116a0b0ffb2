"""Score a JSONL file with a POLAR reward model.

    python -m megatron_polar.score --model CKPT|HF_DIR [--tokenizer TOK] --input triples.jsonl --output scored.jsonl \
        [--batch-tokens N] [--normalize calib.json] [--skip-bad] [--resume]
    python -m megatron_polar.score --model CKPT --tokenizer TOK --calibrate calib.jsonl --save-normalizer calib.json
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_polar.scoring.batch_scoring import score_file, stats_dict
from megatron_polar.scoring.cli import add_scorer_args, scorer_from_args
from megatron_polar.scoring.jsonl import BadRowError, iter_jsonl


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megatron_polar.score", description=__doc__.split("\n")[0])
    add_scorer_args(p)
    p.add_argument("--input", help="JSONL of {prompt, reference(s), candidates} or training triples")
    p.add_argument("--output", help="scored JSONL (written whole or not at all)")
    p.add_argument("--chunk-rows", type=int, default=256, help="rows scored together (and committed) at once")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad rows instead of stopping")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--calibrate", metavar="JSONL", help="fit a reward normaliser on these rows")
    p.add_argument("--save-normalizer", metavar="JSON", help="where --calibrate writes the normaliser")
    args = p.parse_args(argv)
    if args.calibrate and not args.save_normalizer:
        p.error("--calibrate needs --save-normalizer")
    if not args.calibrate and not (args.input and args.output):
        p.error("give --input and --output (or --calibrate and --save-normalizer)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scorer = scorer_from_args(args)
    try:
        if args.calibrate:
            rows = []
            for lineno, obj, error in iter_jsonl(args.calibrate):
                if error:
                    raise BadRowError(f"{args.calibrate}:{lineno}: {error}")
                rows.append(obj)
            norm = scorer.calibrate(rows, save_to=args.save_normalizer)
            print(
                f"normaliser: mean {norm.mean:.6g} std {norm.std:.6g} over {norm.count} rewards "
                f"-> {args.save_normalizer}"
            )
        if args.input:
            stats = score_file(
                scorer,
                args.input,
                args.output,
                chunk_rows=args.chunk_rows,
                skip_bad=args.skip_bad,
                resume=args.resume,
                progress=not args.no_progress,
            )
            print(json.dumps(stats_dict(stats)))
    except (BadRowError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
