"""The demo's stages, in order. Each takes its inputs from the previous stage's files.

1. ``generate``  synthetic policy rollouts + ranked counting questions (pure Python, offline)
2. ``data``      sentencepiece tokenizer; ``data_tools pair`` / ``rank`` / ``build`` -> indexed datasets
3. ``pretrain``  ``megatron_polar.train`` in 2 processes on the held-out-policy validation set
4. ``finetune``  ``megatron_polar.train stage=sft checkpoint.pretrained=<pre-training checkpoint>``
5. ``evaluate``  before/after accuracies, ``convert export-hf``, example scores
6. ``report``    ``report/REPORT.md`` + PNG plots
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_polar.checkpoint import manager
from megatron_polar.data.pair_dataset import read_manifest
from megatron_polar.data.tokenizer import train_sentencepiece
from megatron_polar.demo import counting, in_process_scoring, policies
from megatron_polar.demo.stages import (
    DemoPaths,
    DemoSizes,
    mark_done,
    read_done,
    read_jsonl,
    run_cli,
    run_parallel,
    torchrun_args,
    write_jsonl,
)
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


def _echo_training(line: str) -> bool:
    return (
        "trainer:" in line and ("| loss" in line or "valid" in line or "stopped" in line) or "Error" in line
    )


def stage_generate(p: DemoPaths, s: DemoSizes) -> dict:
    """Rollouts of the policy pool and the ranked counting rows (train words / held-out words)."""
    prompts = policies.make_prompts(s.prompts, s.seed)
    n_roll = write_jsonl(p.rollouts, policies.iter_rollouts(prompts, s.responses_per_policy, s.seed))
    words = counting.word_list()
    train_words, eval_words = counting.split_words(words, s.holdout_word_fraction, s.seed)
    n_tr = write_jsonl(p.count_train, counting.make_rows(train_words, s.count_train_rows, s.seed))
    n_ev = write_jsonl(p.count_eval, counting.make_rows(eval_words, s.count_eval_rows, s.seed + 1))
    info = {
        "rollouts": n_roll,
        "prompts": len(prompts),
        "policies": [spec.name for spec in policies.POOL],
        "holdout_policies": list(policies.HOLDOUT),
        "counting_train_rows": n_tr,
        "counting_eval_rows": n_ev,
        "train_words": len(train_words),
        "holdout_words": len(eval_words),
    }
    log.info(
        "%d rollouts (%d prompts x %d policies x %d), %d + %d ranked counting rows",
        n_roll,
        len(prompts),
        len(policies.POOL),
        s.responses_per_policy,
        n_tr,
        n_ev,
    )
    mark_done(p.generate, info)
    return info


def _tokenizer_corpus(p: DemoPaths):
    for row in read_jsonl(p.rollouts):
        yield row["prompt"]
        yield row["response"]
    for path in (p.count_train, p.count_eval):
        for row in read_jsonl(path):
            yield row["prompt"]
            yield from row["responses"]


def _build_args(src: Path, prefix: Path, tok: Path) -> list[str]:
    return ["-m", "data_tools", "build", str(src), "-o", str(prefix), "--tokenizer", str(tok)]


def stage_data(p: DemoPaths, s: DemoSizes) -> dict:
    """Tokenizer, then pre-training triples and fine-tuning triples, then the four indexed datasets."""
    p.data.mkdir(parents=True, exist_ok=True)
    tok = train_sentencepiece(list(_tokenizer_corpus(p)), p.data / "tokenizer", vocab_size=s.vocab_size)
    logs = p.data / "logs"
    common = ["--overwrite"]
    pair = ["-m", "data_tools", "pair", str(p.rollouts), "-o", str(p.pairs)]
    pair += ["--pairs-per-prompt", str(s.pairs_per_prompt), "--seed", str(s.seed)]
    pair += ["--holdout-policies", ",".join(policies.HOLDOUT), "--holdout-output", str(p.pairs_holdout)]
    # rank --mode first3: reference = correct answer, chosen = the correct count phrased otherwise,
    # rejected = the wrong count phrased like the reference: the number must beat surface similarity.
    rank_train = [
        "-m",
        "data_tools",
        "rank",
        str(p.count_train),
        "-o",
        str(p.sft_triples),
        "--mode",
        s.rank_mode,
    ]
    rank_eval = ["-m", "data_tools", "rank", str(p.count_eval), "-o", str(p.sft_eval_triples)]
    run_parallel(
        [
            (pair + common, logs / "pair.log"),
            (rank_train + common, logs / "rank_train.log"),
            (rank_eval + common, logs / "rank_eval.log"),
        ]
    )
    builds = [
        (p.pairs, p.pretrain_train),
        (p.pairs_holdout, p.pretrain_valid),
        (p.sft_triples, p.sft_train),
        (p.sft_eval_triples, p.sft_valid),
    ]
    # two builds at a time: each is one tokenising process, and the machine has two cores
    for chunk in (builds[:2], builds[2:]):
        run_parallel(
            [
                (
                    _build_args(src, prefix, Path(tok)) + ["--no-progress", *common],
                    logs / f"build_{prefix.name}.log",
                )
                for src, prefix in chunk
            ]
        )
    info = {"tokenizer": tok}
    for _, prefix in builds:
        manifest = read_manifest(str(prefix))
        info[prefix.name] = {
            "prefix": str(prefix),
            "pairs": manifest.pairs_written,
            "tokens": manifest.tokens["total"],
        }
        log.info(
            "%s: %d pairs, %d tokens", prefix.name, info[prefix.name]["pairs"], info[prefix.name]["tokens"]
        )
    mark_done(p.data, info)
    return info


def _train_overrides(
    s: DemoSizes, run_dir: Path, train: Path, valid: Path, steps: int, lr: float, eval_interval: int
):
    return [
        f"parallel={s.parallel}",
        f"data.train=[{{path: {train}}}]",
        f"data.valid=[{{path: {valid}}}]",
        f"data.seq_length={s.seq_length}",
        f"model.vocab_size={s.vocab_size}",
        f"train.global_batch_size={s.global_batch_size}",
        f"train.micro_batch_size={s.micro_batch_size}",
        f"train.train_iters={steps}",
        f"train.eval_interval={eval_interval}",
        f"train.eval_iters={s.eval_iters}",
        "train.precision=fp32",
        "data.share_prefix=true",  # prefix | chosen suffix | rejected suffix: the prefix runs once
        f"train.seed={s.seed}",
        f"optim.lr={lr}",
        f"logging.run_dir={run_dir}",
        "logging.log_interval=25",
        "logging.tensorboard=false",
        "checkpoint.save_interval=0",
        "checkpoint.keep_last=1",
    ]


def _ensure_prefix_lengths(prefixes: list[Path], run_dir: Path) -> None:
    """Datasets reused from a demo_out built before the shared-prefix sidecar get it added in place."""
    for prefix in prefixes:
        if not Path(f"{prefix}.prefix.npy").exists():
            args = ["-m", "data_tools", "add-prefix-lengths", str(prefix), "--overwrite"]
            run_cli(args, run_dir / f"add_prefix_lengths_{prefix.name}.log")


def _final_checkpoint(run_dir: Path) -> str:
    latest = manager.latest_complete(run_dir / "checkpoints")
    if latest is None:
        raise RuntimeError(f"no complete checkpoint under {run_dir / 'checkpoints'}")
    return str(latest)


def stage_pretrain(p: DemoPaths, s: DemoSizes) -> dict:
    """Pre-train the tiny RM on policy pairs, validating on pairs involving held-out policies."""
    ov = _train_overrides(
        s,
        p.pretrain_run,
        p.pretrain_train,
        p.pretrain_valid,
        s.pretrain_steps,
        s.pretrain_lr,
        s.pretrain_eval_interval,
    )
    ov.append("stage=pretrain")
    _ensure_prefix_lengths([p.pretrain_train, p.pretrain_valid], p.pretrain_run)
    run_cli(
        torchrun_args(s.nproc, "megatron_polar.train", ov), p.pretrain_run / "train.log", echo=_echo_training
    )
    info = {"checkpoint": _final_checkpoint(p.pretrain_run), "overrides": ov}
    mark_done(p.pretrain_run, info)
    return info


def stage_finetune(p: DemoPaths, s: DemoSizes) -> dict:
    """Fine-tune from the pre-training checkpoint on ranked counting triples (held-out words validate)."""
    pretrained = read_done(p.pretrain_run)["checkpoint"]
    ov = _train_overrides(s, p.sft_run, p.sft_train, p.sft_valid, s.sft_steps, s.sft_lr, s.sft_eval_interval)
    ov += ["stage=sft", f"checkpoint.pretrained={pretrained}"]
    _ensure_prefix_lengths([p.sft_train, p.sft_valid], p.sft_run)
    run_cli(torchrun_args(s.nproc, "megatron_polar.train", ov), p.sft_run / "train.log", echo=_echo_training)
    info = {"checkpoint": _final_checkpoint(p.sft_run), "pretrained": pretrained, "overrides": ov}
    mark_done(p.sft_run, info)
    return info


def holdout_ranked_rows(p: DemoPaths, limit: int | None = None) -> list[dict]:
    """Held-out-policy triples as ranked rows ``[reference, chosen, rejected]`` (the paper's protocol)."""
    rows = []
    for t in read_jsonl(p.pairs_holdout)[:limit]:
        text = lambda msgs: "\n".join(m["content"] for m in msgs)  # noqa: E731
        rows.append(
            {
                "prompt": text(t["prompt"]),
                "responses": [text(t["reference"]), text(t["chosen"]), text(t["rejected"])],
                "category": f"A={t['policy_a']}"
                if t["policy_a"] in policies.HOLDOUT
                else f"B={t['policy_b']}",
            }
        )
    return rows


def stage_evaluate(p: DemoPaths, s: DemoSizes) -> dict:
    """Accuracies before/after each training stage, the HF export and the example scores."""
    p.eval.mkdir(parents=True, exist_ok=True)
    tok = read_done(p.data)["tokenizer"]
    pre_ckpt, sft_ckpt = read_done(p.pretrain_run)["checkpoint"], read_done(p.sft_run)["checkpoint"]
    holdout = p.eval / "holdout_policies.ranked.jsonl"
    write_jsonl(holdout, holdout_ranked_rows(p))
    # the CLIs, as a user runs them: fine-tuning prompts before (pre-trained) and after (fine-tuned),
    # held-out policies after pre-training; and the export of the fine-tuned model
    evaluate = ["-m", "megatron_polar.evaluate", "--tokenizer", tok, "--device", "cpu"]
    run_parallel(
        [
            (
                evaluate
                + [
                    "--model",
                    pre_ckpt,
                    "--input",
                    str(p.count_eval),
                    "--output",
                    str(p.eval / "counting_before.json"),
                ],
                p.eval / "evaluate.log",
            ),
            (
                evaluate
                + [
                    "--model",
                    sft_ckpt,
                    "--input",
                    str(p.count_eval),
                    "--output",
                    str(p.eval / "counting_after.json"),
                ],
                p.eval / "evaluate_after.log",
            ),
        ]
    )
    run_parallel(
        [
            (
                evaluate
                + [
                    "--model",
                    pre_ckpt,
                    "--input",
                    str(holdout),
                    "--output",
                    str(p.eval / "holdout_after.json"),
                ],
                p.eval / "evaluate_holdout.log",
            ),
            (
                [
                    "-m",
                    "megatron_polar.convert",
                    "export-hf",
                    "--checkpoint",
                    sft_ckpt,
                    "--output",
                    str(p.export),
                    "--format",
                    "llama",
                    "--tokenizer",
                    tok,
                    "--overwrite",
                ],
                p.eval / "export.log",
            ),
        ]
    )
    results = {
        "counting_before": json.loads((p.eval / "counting_before.json").read_text()),
        "counting_after": json.loads((p.eval / "counting_after.json").read_text()),
        "holdout_after": json.loads((p.eval / "holdout_after.json").read_text()),
        "holdout_before": in_process_scoring.untrained_accuracy(p.pretrain_run, tok, read_jsonl(holdout)),
        "examples": in_process_scoring.score_examples(sft_ckpt, tok, p.export),
        "export": str(p.export),
    }
    (p.eval / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    mark_done(p.eval, {"results": str(p.eval / "results.json")})
    return results
