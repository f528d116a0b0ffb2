"""Preference accuracy of a POLAR reward model on ranked responses (the paper's protocol).

    python -m megatron_polar.evaluate --model CKPT|HF_DIR [--tokenizer TOK] --input ranked.jsonl [--output report.json]

Rows: ``{"prompt", "responses": [best, ..., worst], "category"?}`` with at least 3 responses; the best is
the reference and a row counts as correct when the 2nd response scores above the 3rd.
"""

from __future__ import annotations

import argparse
import sys

from megatron_polar.scoring.cli import add_scorer_args, scorer_from_args
from megatron_polar.scoring.jsonl import BadRowError, iter_jsonl, write_json_atomic
from megatron_polar.scoring.preference_accuracy import evaluate_preferences, format_table, parse_ranked_row
from megatron_polar.scoring.requests import RequestError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megatron_polar.evaluate", description=__doc__.split("\n")[0])
    add_scorer_args(p)
    p.add_argument("--input", required=True, help="JSONL of ranked responses")
    p.add_argument("--output", help="write the report as JSON here")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad rows instead of stopping")
    return p.parse_args(argv)


def read_ranked(path: str, skip_bad: bool) -> tuple[list, int]:
    """Parsed rows of ``path`` and the number of skipped bad rows; BadRowError names file:line."""
    rows, skipped = [], 0
    for lineno, obj, error in iter_jsonl(path):
        try:
            if error:
                raise RequestError(error)
            rows.append(parse_ranked_row(obj))
        except RequestError as exc:
            if not skip_bad:
                raise BadRowError(f"{path}:{lineno}: {exc}") from None
            skipped += 1
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rows, skipped = read_ranked(args.input, args.skip_bad)
    except (BadRowError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scorer = scorer_from_args(args)
    report = evaluate_preferences(scorer, rows)
    report["input"], report["skipped_rows"] = args.input, skipped
    print(format_table(report))
    if skipped:
        print(f"({skipped} bad rows skipped)")
    if args.output:
        write_json_atomic(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
