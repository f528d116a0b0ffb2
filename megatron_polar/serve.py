"""Serve a POLAR reward model over HTTP (OpenRLHF ``/get_reward``, native ``/score``, ``/health``).

python -m megatron_polar.serve --model CKPT|HF_DIR [--tokenizer TOK] --port 8000 [--max-batch 64] [--max-wait-ms 5]
    [--chat-template POLICY_TOKENIZER_DIR|TEMPLATE.jinja ...] [--reference-free] [--max-body-bytes N]
"""

from __future__ import annotations

import argparse
import sys

from megatron_polar.scoring.chat_template import BUILTIN, ChatTemplate, ChatTemplateError
from megatron_polar.scoring.cli import add_scorer_args, scorer_from_args
from megatron_polar.scoring.server import DEFAULT_MAX_BODY_BYTES, build_server, serve_until_signal
from megatron_polar.scoring.service import MISMATCH_POLICIES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megatron_polar.serve", description=__doc__.split("\n")[0])
    add_scorer_args(p)
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    s.add_argument("--max-batch", type=int, default=64, help="sequences per dynamic batch")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    s.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="larger request bodies get 413 (default: %(default)s, 256 MiB)",
    )
    s.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        help="seconds a request waits for its rewards (503 after)",
    )
    r = p.add_argument_group("RL trainers (/get_reward)")
    r.add_argument(
        "--chat-template",
        action="append",
        default=[],
        metavar="SPEC",
        help="the policy's chat template, taken off OpenRLHF's prompts and queries: a tokenizer directory "
        "(its tokenizer_config.json chat_template), a Jinja file, or a built-in name "
        f"({', '.join(BUILTIN)}, always tried); repeatable",
    )
    r.add_argument(
        "--reference-free",
        action="store_true",
        help="score empty or missing labels against an empty reference instead of answering 400",
    )
    r.add_argument(
        "--on-prompt-mismatch",
        default="error",
        choices=MISMATCH_POLICIES,
        help="a query in which its prompt cannot be found: 400, or score the whole query as the response",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        templates = [ChatTemplate.load(spec) for spec in args.chat_template]
    except (ChatTemplateError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    scorer = scorer_from_args(args, max_batch_sequences=args.max_batch)
    server = build_server(
        scorer,
        args.host,
        args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_body_bytes=args.max_body_bytes,
        on_prompt_mismatch=args.on_prompt_mismatch,
        chat_templates=templates,
        reference_free=args.reference_free,
        request_timeout_s=args.request_timeout,
    )
    print(f"listening on {server.url}", flush=True)  # machine-readable line for launchers and tests
    serve_until_signal(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
