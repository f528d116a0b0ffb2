"""``python -m megatron_polar.demo [--out demo_out] [--rebuild] [--quick] [--check]``

The whole POLAR pipeline on a CPU, offline: synthetic policy rollouts -> tokenizer and datasets ->
2-process pre-training -> fine-tuning on ranked counting questions -> evaluation, HF export, report.
Finished stages are reused on a second run (``--rebuild`` starts over). ``--check`` exits non-zero
when an accuracy threshold is missed. See docs/demo.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from megatron_polar.demo import pipeline, report
from megatron_polar.demo.stages import FULL, QUICK, DemoPaths, StageLog, Timer, is_done, read_done, reset
from megatron_polar.utils.logging import setup_logging

PRETRAIN_THRESHOLD = 0.75
FINETUNE_THRESHOLD = 0.80


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megatron_polar.demo", description=__doc__.split("\n\n")[1])
    p.add_argument("--out", default="demo_out", help="output root (default: %(default)s)")
    p.add_argument("--rebuild", action="store_true", help="redo every stage instead of reusing finished ones")
    p.add_argument(
        "--quick", action="store_true", help="reduced sizes for tests: seconds, not minutes; no thresholds"
    )
    p.add_argument("--check", action="store_true", help="exit 1 when an accuracy threshold is missed")
    p.add_argument("--parallel", choices=("pp2", "tp2"), default=None, help="2-process layout (default: pp2)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("INFO")
    sizes = QUICK if args.quick else FULL
    if args.parallel:
        sizes = replace(sizes, parallel=args.parallel)
    paths = DemoPaths(Path(args.out).resolve())
    if args.rebuild:
        for d in (paths.generate, paths.data, paths.runs, paths.eval, paths.export.parent, paths.report):
            reset(d)
    t0 = time.perf_counter()
    stages = StageLog()
    plan = [
        ("generate", paths.generate, pipeline.stage_generate),
        ("data", paths.data, pipeline.stage_data),
        ("pretrain", paths.pretrain_run, pipeline.stage_pretrain),
        ("finetune", paths.sft_run, pipeline.stage_finetune),
        ("evaluate", paths.eval, pipeline.stage_evaluate),
    ]
    upstream_redone = False
    for name, stage_dir, fn in plan:
        if is_done(stage_dir) and not upstream_redone:
            print(
                f"[demo] stage {name}: reusing {stage_dir} (delete it or pass --rebuild to redo)", flush=True
            )
            stages.seconds[name] = 0.0
            stages.reused.append(name)
            continue
        if upstream_redone:
            reset(stage_dir)  # built from inputs that have just changed
        # else an interrupted stage: keep what it left (the trainer resumes from complete checkpoints)
        upstream_redone = True
        print(f"[demo] stage {name} ...", flush=True)
        with Timer(stages, name):
            fn(paths, sizes)
        print(f"[demo] stage {name} done in {stages.seconds[name]:.1f} s", flush=True)

    results = json.loads((paths.eval / "results.json").read_text())
    holdout_after = results["holdout_after"]["overall"]["accuracy"]
    holdout_before = results["holdout_before"]["accuracy_ties_half"]
    count_before = results["counting_before"]["overall"]["accuracy"]
    count_after = results["counting_after"]["overall"]["accuracy"]
    checks = [
        (
            "pre-training: held-out-policy pair accuracy",
            holdout_after >= PRETRAIN_THRESHOLD,
            f"{holdout_before:.3f} -> {holdout_after:.3f}",
            f">= {PRETRAIN_THRESHOLD}",
        ),
        (
            "fine-tuning: held-out counting prompts, correct preferred",
            count_after >= FINETUNE_THRESHOLD,
            f"{count_before:.3f} -> {count_after:.3f}",
            f">= {FINETUNE_THRESHOLD}",
        ),
    ]
    with Timer(stages, "report"):
        path = report.write_report(
            paths.report,
            results=results,
            checks=checks,
            runs={"pretrain": paths.pretrain_run, "finetune": paths.sft_run},
            data_info=read_done(paths.data),
            generate_info=read_done(paths.generate),
            stage_seconds=stages.seconds,
            reused=stages.reused,
            parallel=sizes.parallel,
        )
    print(f"\n[demo] finished in {time.perf_counter() - t0:.1f} s; report: {path}")
    for name, ok, detail, threshold in checks:
        status = "PASS" if ok else ("FAIL" if not args.quick else "INFO (quick mode, no threshold)")
        print(f"[demo] {status}: {name}: {detail} (threshold {threshold})")
    if args.check and not args.quick and not all(c[1] for c in checks):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
