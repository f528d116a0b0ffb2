"""Layouts: the cluster presets as the launch scripts run them, invalid and oversized layouts, FLOPs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from megatron_polar import plan as plan_cli
from megatron_polar.config.loader import load_config
from megatron_polar.planning import plan_layout
from megatron_polar.planning.memory import GB

LAUNCH = Path(__file__).resolve().parents[2] / "launch"


def script_overrides(name: str) -> list[str]:
    """The Hydra overrides a launch script passes before the user's own."""
    text = (LAUNCH / f"{name}.sh").read_text()
    block = re.search(r"polar_slurm_launch \\\n(.*?)\"\$@\"", text, re.S).group(1)
    return block.replace("\\\n", " ").split()


@pytest.mark.parametrize(
    ("script", "gpus"), [("pretrain_7b", 912), ("pretrain_1_8b", 320), ("sft_7b", 16), ("sft_1_8b", 16)]
)
def test_launch_presets_fit_80gb(script, gpus):
    plan = plan_layout(load_config(script_overrides(script)), gpus)
    assert plan.ok, plan.errors
    assert plan.fits and plan.peak_memory.total < 0.8 * 80 * GB  # headroom for what the model omits
    assert plan.tp * plan.pp * plan.dp == gpus
    assert not [w for w in plan.warnings if "TP=" in w]


def test_paper_7b_run():
    plan = plan_layout(load_config(script_overrides("pretrain_7b")), 912)
    assert (plan.tp, plan.pp, plan.dp, plan.sequence_parallel) == (2, 1, 456, True)
    n = 32 * (218_112_000 - 2 * 4096) + 4096
    assert plan.flops.dense_per_token == 6 * n
    assert plan.flops.attention_per_token == 12 * 32 * 4096 * 8192 / 2  # causal, one POLAR sequence
    seconds = 3.6e12 * plan.flops.model_per_token / (912 * 989e12 * 0.27)
    assert plan.projected_hours == pytest.approx(seconds / 3600)
    assert plan.paper["hours"] == 175
    # facts.md: the paper's 7B run implies ~27% MFU under 6N
    assert 0.25 < plan.paper["implied_mfu_6n"] < 0.28


def test_oversized_layout_is_reported():
    cfg = load_config(
        ["model=polar_7b", "parallel=h800_7b", "data.seq_length=32768", "train.global_batch_size=auto"]
    )
    plan = plan_layout(cfg, 912)
    assert plan.ok and not plan.fits
    assert plan.warnings[0].startswith("does not fit")
    assert plan.peak_memory.total > 80 * GB  # TP=2 + SP but no recomputation: ~99 GB


def test_invalid_layouts_are_errors():
    bad_world = plan_layout(load_config(["model=polar_7b", "parallel=tp2pp2"]), 6)
    assert any("not a multiple of TP x PP" in e for e in bad_world.errors)
    bad_batch = plan_layout(load_config(["model=polar_7b", "parallel=tp2", "train.global_batch_size=10"]), 16)
    assert any("global_batch_size=10" in e for e in bad_batch.errors)
    bad_layers = load_config(["model=polar_1_8b"])
    bad_layers.parallel.pipeline_model_parallel_size = 5  # 24 layers
    assert any("num_layers=24" in e for e in plan_layout(bad_layers, 10).errors)


def test_tp_warnings():
    cfg = load_config(
        ["model=polar_7b", "parallel.tensor_model_parallel_size=8", "parallel.sequence_parallel=true"]
    )
    assert any("TP=8 > 2 on H800" in w for w in plan_layout(cfg, 64).warnings)
    cfg.parallel.tensor_model_parallel_size = 16
    cfg.model.num_attention_heads = cfg.model.num_query_groups = 32
    assert any("exceeds the 8 GPUs of a node" in w for w in plan_layout(cfg, 64).warnings)


def test_cli_table_json_brief(capsys):
    argv = ["--model", "polar_7b", "--gpus", "912", "--tp", "2", "--sp", "--seq-length", "32768"]
    argv += ["--recompute", "full", "--global-batch", "912", "--tokens", "3.6e12", "--mfu", "0.27"]
    assert plan_cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "2 x 1 x 456" in table and "7,358,652,416" in table and "175 h" in table
    assert plan_cli.main(argv + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["layout"] == {"tp": 2, "pp": 1, "vpp": None, "dp": 456, "sequence_parallel": True}
    assert data["params"]["total"] == 7_358_652_416
    assert data["batch"]["tokens_per_step"] == 912 * 32768
    assert data["memory_gb"]["fits"] is True
    assert plan_cli.main(argv + ["--brief"]) == 0
    assert capsys.readouterr().out.startswith("layout: world=912 TP=2 PP=1 VPP=1 DP=456 SP=on")


def test_cli_exit_codes(capsys):
    assert plan_cli.main(["--model", "polar_7b", "--gpus", "912", "--tp", "3"]) == 2  # 32 heads
    assert plan_cli.main(["--model", "polar_7b", "--gpus", "8", "--seq-length", "32768", "--strict"]) == 3
    assert plan_cli.main(["--gpus", "8", "model=polar_7b", "--seq-length", "32768"]) == 0  # warns only
    assert "does not fit" in capsys.readouterr().out
    # overrides may sit between flags
    assert (
        plan_cli.main(["model=polar_7b", "--gpus", "8", "data.seq_length=32768", "--tp", "2", "--brief"]) == 0
    )
    assert "does not fit" in capsys.readouterr().out
