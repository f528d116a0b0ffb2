"""The demo report: PNG plots of the training curves and a Markdown summary of the measured numbers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


def read_metrics(run_dir: Path) -> dict[str, list[dict]]:
    """``metrics.jsonl`` of a run split by ``split`` (train / valid); the last row per step wins."""
    rows: dict[str, dict[int, dict]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows.setdefault(r.get("split", "train"), {})[r["step"]] = r
    return {k: [v[s] for s in sorted(v)] for k, v in rows.items()}


def throughput(metrics: dict[str, list[dict]]) -> dict:
    """Median tokens/s and step time over the run's train steps (the first step excluded: warm-up)."""
    train = metrics.get("train", [])[1:] or metrics.get("train", [])
    if not train:
        return {"tokens_per_s": float("nan"), "step_time_s": float("nan"), "steps": 0}
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in train),
        "step_time_s": statistics.median(r.get("step_time_s", float("nan")) for r in train),
        "steps": len(metrics["train"]),
    }


def plot_runs(runs: dict[str, Path], before: dict[str, float], out_dir: Path) -> list[Path]:
    """``training_loss.png`` and ``validation_accuracy.png`` for the named runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    data = {name: read_metrics(d) for name, d in runs.items()}
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (name, m) in zip(axes[0], data.items()):
        train = m.get("train", [])
        ax.plot(
            [r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.5, label="train (step)"
        )
        if len(train) >= 10:
            k = max(1, len(train) // 20)
            smooth = [
                statistics.fmean(r["loss"] for r in train[max(0, i - k) : i + 1]) for i in range(len(train))
            ]
            ax.plot([r["step"] for r in train], smooth, lw=1.8, label=f"train (mean of {k + 1})")
        valid = m.get("valid", [])
        ax.plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="validation")
        ax.set(title=f"{name}: Bradley-Terry loss", xlabel="step", ylabel="loss")
        ax.legend(fontsize=8)
    fig.tight_layout()
    loss_png = out_dir / "training_loss.png"
    fig.savefig(loss_png, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for ax, (name, m) in zip(axes[0], data.items()):
        valid = m.get("valid", [])
        steps = [0] + [r["step"] for r in valid] if name in before else [r["step"] for r in valid]
        accs = (
            [before[name]] + [r["accuracy"] for r in valid]
            if name in before
            else [r["accuracy"] for r in valid]
        )
        ax.plot(steps, accs, "o-", label="validation pair accuracy")
        ax.axhline(0.5, color="grey", ls="--", lw=0.8, label="chance")
        ax.set(title=f"{name}: held-out validation", xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    acc_png = out_dir / "validation_accuracy.png"
    fig.savefig(acc_png, dpi=110)
    plt.close(fig)
    return [loss_png, acc_png]


def _acc(report: dict) -> float:
    return report["overall"]["accuracy"]


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def write_report(
    out_dir: Path,
    *,
    results: dict,
    checks: list[tuple[str, bool, str, str]],
    runs: dict[str, Path],
    data_info: dict,
    generate_info: dict,
    stage_seconds: dict[str, float],
    reused: list[str],
    parallel: str,
) -> Path:
    """Write ``REPORT.md`` (and the plots) under ``out_dir``; return its path."""
    hb = results["holdout_before"]
    before = {"pretrain": hb["accuracy_ties_half"], "finetune": _acc(results["counting_before"])}
    pngs = plot_runs(runs, before, out_dir)
    tp = {name: throughput(read_metrics(d)) for name, d in runs.items()}
    valid_last = {name: (read_metrics(d).get("valid") or [{}])[-1] for name, d in runs.items()}
    lines = [
        "# POLAR end-to-end demo report",
        "",
        "Everything below was generated offline on this machine by `python -m megatron_polar.demo` "
        "(see `docs/demo.md`).",
        "",
        "## Results",
        "",
        "| check | before -> after | threshold | |",
        "|---|---|---|---|",
    ]
    for name, ok, detail, threshold in checks:
        lines.append(f"| {name} | {detail} | {threshold} | {'PASS' if ok else 'FAIL'} |")
    lines += [
        "",
        "### Pre-training: pairs involving held-out policies",
        "",
        f"Held-out policies: {', '.join(generate_info['holdout_policies'])} (never seen in training); "
        f"{results['holdout_after']['overall']['n']} validation triples, each with a held-out policy as "
        "policy A (reference + chosen) or as policy B (rejected).",
        "",
        "| model | pair accuracy | how |",
        "|---|---|---|",
        f"| untrained (step 0, zero reward head) | {_fmt(hb['accuracy_ties_half'])} | every reward is 0: "
        f"{hb['ties']} of {hb['overall']['n']} pairs tie, a tie counts half (strict protocol: "
        f"{_fmt(_acc(hb))}) |",
        f"| pre-trained | **{_fmt(_acc(results['holdout_after']))}** | `python -m megatron_polar.evaluate` "
        "(reference = policy A's first response; correct when chosen > rejected) |",
        f"| pre-trained (trainer's validation, last) | {_fmt(valid_last['pretrain'].get('accuracy', float('nan')))} "
        "| `metrics.jsonl`, split=valid |",
        "",
        "Per held-out policy (A = held-out policy wrote reference and chosen; B = it wrote the rejected):",
        "",
        "| category | n | accuracy |",
        "|---|---|---|",
    ]
    for cat, r in results["holdout_after"]["categories"].items():
        lines.append(f"| {cat} | {r['n']} | {_fmt(r['accuracy'])} |")
    cb, ca = results["counting_before"], results["counting_after"]
    lines += [
        "",
        "### Fine-tuning: counting questions about held-out words",
        "",
        f"{cb['overall']['n']} ranked rows over words that appear in no fine-tuning prompt. Protocol of the "
        "paper: the top response is the reference (correct count, one phrasing); correct when the 2nd "
        "(correct count, another phrasing) scores above the 3rd (off by one, phrased like the reference).",
        "",
        "| category | n | before fine-tuning (pre-trained) | after fine-tuning |",
        "|---|---|---|---|",
    ]
    for cat in ca["categories"]:
        lines.append(
            f"| {cat} | {ca['categories'][cat]['n']} | {_fmt(cb['categories'][cat]['accuracy'])} | "
            f"{_fmt(ca['categories'][cat]['accuracy'])} |"
        )
    lines.append(f"| **overall** | {ca['overall']['n']} | {_fmt(_acc(cb))} | **{_fmt(_acc(ca))}** |")
    lines += [
        "",
        "## Example scores (fine-tuned model)",
        "",
        f"`PolarScorer.score(prompt, reference, candidates)` on the megatron checkpoint, and the exported HF "
        f"`LlamaForSequenceClassification` (`{results['export']}`) on the same token ids.",
        "",
    ]
    prev = None
    for ex in results["examples"]:
        if ex["prompt"] != prev:
            lines += ["", f"**Prompt:** {ex['prompt']}  ", f"**Reference:** {ex['reference']}", ""]
            lines += ["| candidate | kind | reward | reward (HF export) |", "|---|---|---|---|"]
            prev = ex["prompt"]
        lines.append(f"| {ex['candidate']} | {ex['label']} | {ex['reward']:.3f} | {ex['reward_hf']:.3f} |")
    lines += [
        "",
        "## Training curves",
        "",
        *[f"![{p.stem}]({p.name})" for p in pngs],
        "",
        "## Runs and throughput",
        "",
        f"Both runs: `megatron_polar.train parallel={parallel}` in 2 processes (CPU, gloo), tiny model "
        "(4 layers, hidden 64), fp32, packed shared-prefix rows (`data.share_prefix=true`).",
        "",
        "| run | steps | median tokens/s | median step time (s) | dataset |",
        "|---|---|---|---|---|",
    ]
    dsets = {"pretrain": "pretrain_train", "finetune": "sft_train"}
    for name in runs:
        d = data_info.get(dsets.get(name, ""), {})
        lines.append(
            f"| {name} | {tp[name]['steps']} | {tp[name]['tokens_per_s']:.0f} | {tp[name]['step_time_s']:.3f} | "
            f"{d.get('pairs', '?')} pairs, {d.get('tokens', '?')} tokens |"
        )
    lines += ["", "## Stage wall times", "", "| stage | seconds |", "|---|---|"]
    for name, sec in stage_seconds.items():
        lines.append(f"| {name} | {'reused' if name in reused else f'{sec:.1f}'} |")
    lines += [
        "",
        f"Data: {generate_info['rollouts']} rollouts from {len(generate_info['policies'])} policies "
        f"({generate_info['prompts']} prompts); {generate_info['counting_train_rows']} + "
        f"{generate_info['counting_eval_rows']} ranked counting rows "
        f"({generate_info['train_words']} training words, {generate_info['holdout_words']} held-out words).",
        "",
    ]
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(lines))
    (out_dir / "summary.json").write_text(
        json.dumps(
            {
                "checks": [{"name": n, "pass": ok, "detail": d, "threshold": t} for n, ok, d, t in checks],
                "holdout_accuracy_before": hb["accuracy_ties_half"],
                "holdout_accuracy_after": _acc(results["holdout_after"]),
                "counting_accuracy_before": _acc(cb),
                "counting_accuracy_after": _acc(ca),
                "throughput": tp,
                "stage_seconds": stage_seconds,
            },
            indent=2,
        )
        + "\n"
    )
    log.info("report written to %s", path)
    return path
