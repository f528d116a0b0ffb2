"""The demo's reduced run (``--quick``) end to end: every stage's outputs exist and feed the next.

No accuracy thresholds here (a few training steps learn nothing); ``make demo`` checks those.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_polar.demo.stages import DemoPaths, subprocess_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[DemoPaths, str]:
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_polar.demo", "--quick", "--check", "--out", str(out)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return DemoPaths(out), proc.stdout


def _done(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "DONE").read_text())


@pytest.mark.slow
def test_stages_chain(quick_run):
    p, stdout = quick_run
    # 1. rollouts as `data_tools pair` reads them
    row = json.loads(p.rollouts.read_text().splitlines()[0])
    assert set(row) == {"prompt", "policy", "response"}
    gen = _done(p.generate)
    assert gen["holdout_policies"] and set(gen["holdout_policies"]) <= set(gen["policies"])
    # 2. datasets built from them, with the demo's tokenizer
    data = _done(p.data)
    for prefix in (p.pretrain_train, p.pretrain_valid, p.sft_train, p.sft_valid):
        manifest = json.loads(Path(f"{prefix}.manifest.json").read_text())
        assert manifest["counts"]["pairs_written"] > 0
        assert manifest["tokenizer"]["path"] == str(Path(data["tokenizer"]).resolve())
    train_inputs = json.loads(Path(f"{p.pretrain_train}.manifest.json").read_text())["inputs"]
    assert [Path(i["path"]).name for i in train_inputs] == [p.pairs.name]
    held = {json.loads(line)["policy_a"] for line in p.pairs.read_text().splitlines()}
    assert not held & set(gen["holdout_policies"]), "held-out policies leaked into the training pairs"
    # 3. pre-training validated on the held-out set and left a complete checkpoint
    pre = _done(p.pretrain_run)
    assert (Path(pre["checkpoint"]) / "COMPLETE").exists() or any(Path(pre["checkpoint"]).iterdir())
    assert any(f"data.valid=[{{path: {p.pretrain_valid}}}]" == o for o in pre["overrides"])
    assert any(o.startswith("parallel=") for o in pre["overrides"])
    splits = {
        json.loads(line)["split"] for line in (p.pretrain_run / "metrics.jsonl").read_text().splitlines()
    }
    assert {"train", "valid"} <= splits
    # 4. fine-tuning started from exactly that checkpoint
    sft = _done(p.sft_run)
    assert sft["pretrained"] == pre["checkpoint"]
    assert f"checkpoint.pretrained={pre['checkpoint']}" in sft["overrides"]
    assert "stage=sft" in sft["overrides"]
    # 5. export + evaluation + report
    assert (p.export / "config.json").exists()
    assert list(p.export.glob("*.safetensors"))
    results = json.loads((p.eval / "results.json").read_text())
    assert results["counting_after"]["model"] == sft["checkpoint"]
    assert results["holdout_before"]["accuracy_ties_half"] == pytest.approx(0.5)
    for ex in results["examples"]:
        assert ex["reward"] == pytest.approx(ex["reward_hf"], abs=1e-4)
    report = (p.report / "REPORT.md").read_text()
    summary = json.loads((p.report / "summary.json").read_text())
    assert f"{summary['counting_accuracy_after']:.3f}" in report
    assert f"{summary['holdout_accuracy_after']:.3f}" in report
    assert "tokens/s" in report and "strawberry" in report
    for png in ("training_loss.png", "validation_accuracy.png"):
        assert (p.report / png).stat().st_size > 1000
    assert "report:" in stdout


@pytest.mark.slow
def test_second_run_reuses_stages(quick_run):
    p, _ = quick_run
    before = (p.pretrain_run / "DONE").stat().st_mtime_ns
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_polar.demo", "--quick", "--out", str(p.root)],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("reusing") == 5
    assert (p.pretrain_run / "DONE").stat().st_mtime_ns == before
