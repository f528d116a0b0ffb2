"""The environment the SLURM scripts export lets a real run start: gloo gets interface names it accepts.

gloo binds to every comma-separated entry of ``GLOO_SOCKET_IFNAME`` as an exact interface name, so
NCCL's exclusion syntax (``^lo,docker0``) stops every start-up with "Unable to find address for: ^lo".
The regression test takes the variables ``launch/pretrain_7b.sh`` prints under DRY_RUN and starts a
2-process CPU training run under exactly them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch.fake_slurm import slurm_env
from tests.launch.test_launch_scripts import parse_dry_run, run_script
from tests.support.launcher import free_port
from tests.support.synthetic_task import build_task
from tests.support.training_runs import REPO, base_overrides, cli_env, read_metrics

pytestmark = pytest.mark.distributed


def dry_run_env(tmp_path: Path, script: str = "pretrain_7b", **extra_env: str) -> dict[str, str]:
    """The variables ``script`` exports for its tasks, read back from its DRY_RUN print."""
    env = slurm_env(tmp_path, nodes=2)
    env.pop("GLOO_SOCKET_IFNAME", None)
    env.update(DRY_RUN="1", **extra_env)
    res = run_script(script, env)
    assert res.returncode == 0, res.stdout + res.stderr
    return {k: (shlex.split(v) or [""])[0] for k, v in parse_dry_run(res.stdout)["env"].items()}


def test_gloo_interface_is_a_real_interface_name(tmp_path):
    exported = dry_run_env(tmp_path)
    assert exported["NCCL_SOCKET_IFNAME"] == "^lo,docker0"  # NCCL's syntax stays where NCCL reads it
    names = exported.get("GLOO_SOCKET_IFNAME")
    if names is not None:  # unset is allowed (no interface found): gloo then uses the host name
        for name in names.split(","):
            assert Path("/sys/class/net", name).exists(), names


def test_nccl_syntax_in_gloo_variable_is_refused_by_name(tmp_path):
    env = slurm_env(tmp_path, nodes=2)
    env.update(DRY_RUN="1", GLOO_SOCKET_IFNAME="^lo,docker0")
    res = run_script("pretrain_7b", env)
    assert res.returncode != 0
    assert "GLOO_SOCKET_IFNAME=^lo,docker0" in res.stderr and "exact interface names" in res.stderr


def test_two_process_training_under_the_exported_environment(tmp_path):
    exported = dry_run_env(tmp_path)
    task = build_task(tmp_path / "task", n_train=64, n_valid=16)
    run_dir = tmp_path / "run"
    env = {**cli_env(), **exported, "OMP_NUM_THREADS": "1"}
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={free_port()}",
        "-m",
        "megatron_polar.train",
        *base_overrides(task, run_dir, 2, ["train.global_batch_size=8"]),
    ]
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
