"""The launch scripts under a fake SLURM: DRY_RUN output, #SBATCH headers, a launch and a requeue."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .fake_slurm import slurm_env

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
# script -> (default nodes in its #SBATCH header, model preset, parallel preset)
SLURM_SCRIPTS = {
    "pretrain_7b": (114, "polar_7b", "h800_7b"),
    "pretrain_1_8b": (40, "polar_1_8b", "h800_1_8b"),
    "sft_7b": (2, "polar_7b", "h800_7b"),
    "sft_1_8b": (2, "polar_1_8b", "h800_1_8b"),
}
ALL_SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def run_script(name: str, env: dict[str, str], *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LAUNCH / f"{name}.sh"), *overrides], env=env, capture_output=True, text=True, timeout=60
    )


def sbatch_header(name: str) -> dict[str, str]:
    opts = {}
    for line in (LAUNCH / f"{name}.sh").read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.split(None, 1)[1].lstrip("-").partition("=")
            opts[key] = value
    return opts


def parse_dry_run(out: str) -> dict:
    """Pull the figures out of a DRY_RUN print."""
    layout = dict(kv.split("=", 1) for kv in re.search(r"^layout: (.*)$", out, re.M).group(1).split())
    nodes = [
        dict(kv.split("=", 1) for kv in line.split()[2:])
        for line in out.splitlines()
        if re.match(r"^  node \d+ host=", line)
    ]
    hosts = re.findall(r"^  node \d+ host=(\S+)", out, re.M)
    job = dict(kv.split("=", 1) for kv in re.search(r"^job: (.*)$", out, re.M).group(1).split())
    srun = shlex.split(re.search(r"^srun: (.*)$", out, re.M).group(1))
    python = shlex.split(re.search(r"^python: (.*)$", out, re.M).group(1))
    env = dict(
        line.strip().split("=", 1) for line in out.split("\nenv:\n")[1].split("\nsrun:")[0].splitlines()
    )
    return {
        "layout": layout,
        "nodes": nodes,
        "hosts": hosts,
        "job": job,
        "srun": srun,
        "python": python,
        "env": env,
    }


# ---- static checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    res = subprocess.run(
        ["shellcheck", "-x", *map(str, ALL_SCRIPTS)], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout


@pytest.mark.parametrize("name", SLURM_SCRIPTS)
def test_sbatch_header_requests_signal_and_requeue(name):
    opts = sbatch_header(name)
    assert int(opts["nodes"]) == SLURM_SCRIPTS[name][0]
    assert opts["ntasks-per-node"] == "8" and opts["gpus-per-node"] == "8"
    # B: sends the signal to the batch shell, which forwards it through srun to every rank.
    m = re.fullmatch(r"B:USR1@(\d+)", opts["signal"])
    assert m and int(m.group(1)) >= 300, opts["signal"]
    assert "requeue" in opts
    assert opts["open-mode"] == "append"  # a requeued job appends to its logs
    assert opts["job-name"]


# ---- DRY_RUN -------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [2, 114])
@pytest.mark.parametrize("name", SLURM_SCRIPTS)
def test_dry_run_layout_and_ranks(name, nodes, tmp_path):
    env = slurm_env(tmp_path, nodes, job_id=777001, job_name=f"polar-{name}")
    env["DRY_RUN"] = "1"
    extra = ["optim.clip_grad=0.5", "data=default"]
    if name.startswith("sft") and nodes == 114:
        # The paper's SFT batch of 320 does not divide DP=456 or 912: the launch refuses it up front ...
        res = run_script(name, env, *extra)
        assert res.returncode == 2, res.stdout + res.stderr
        assert "error: train.global_batch_size=320 is not a multiple" in res.stdout
        extra.append("train.global_batch_size=auto")  # ... and an override fixes it.
    res = run_script(name, env, *extra)
    assert res.returncode == 0, res.stdout + res.stderr
    d = parse_dry_run(res.stdout)
    world = nodes * 8

    assert d["job"]["world_size"] == str(world) and d["job"]["nodes"] == str(nodes)
    lay = d["layout"]
    assert int(lay["world"]) == world
    assert int(lay["TP"]) * int(lay["PP"]) * int(lay["DP"]) == world
    assert lay["fits"] == "yes"
    if "7b" in name:
        assert (lay["TP"], lay["PP"], lay["SP"]) == ("2", "1", "on")

    assert d["hosts"] == [f"gpu{i:03d}" for i in range(1, nodes + 1)]
    for i, node in enumerate(d["nodes"]):
        assert node["RANK"] == f"{8 * i}..{8 * i + 7}"
        assert node["LOCAL_RANK"] == "0..7" and node["NODE_RANK"] == str(i)
        assert node["WORLD_SIZE"] == str(world)
        assert node["MASTER_ADDR"] == "gpu001"
        assert node["MASTER_PORT"] == str(20000 + 777001 % 20000)

    srun = d["srun"]
    assert srun[0] == "srun"
    assert f"--nodes={nodes}" in srun and f"--ntasks={world}" in srun and "--ntasks-per-node=8" in srun
    task = srun[srun.index("-c") + 1]
    assert "RANK=$SLURM_PROCID" in task and "LOCAL_RANK=$SLURM_LOCALID" in task
    assert "WORLD_SIZE=$SLURM_NTASKS" in task and "exec python -m megatron_polar.train" in task

    py = d["python"]
    assert py[:3] == ["python", "-m", "megatron_polar.train"]
    _, model, parallel = SLURM_SCRIPTS[name]
    assert f"model={model}" in py and f"parallel={parallel}" in py
    # User overrides come last (Hydra: the last value of a key wins) and reach srun unchanged.
    assert py[-len(extra) :] == extra and srun[-len(extra) :] == extra
    assert d["env"]["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert not (tmp_path / "srun.calls").exists(), "DRY_RUN must not call srun"


@pytest.mark.slow
def test_dry_run_container_flags(tmp_path):
    env = slurm_env(tmp_path, 2)
    env.update(DRY_RUN="1", CONTAINER_MOUNTS="/data:/data,/ckpt:/ckpt")
    srun = parse_dry_run(run_script("sft_7b", env).stdout)["srun"]
    assert "--container-image=nvcr.io#nvidia/pytorch:25.09-py3" in srun
    assert f"--container-mounts={ROOT}:{ROOT},/data:/data,/ckpt:/ckpt" in srun
    assert f"--container-workdir={ROOT}" in srun

    env.update(CONTAINER_IMAGE="/images/polar.sqsh")
    srun = parse_dry_run(run_script("sft_7b", env).stdout)["srun"]
    assert "--container-image=/images/polar.sqsh" in srun

    env.update(CONTAINER_IMAGE="none")
    srun = parse_dry_run(run_script("sft_7b", env).stdout)["srun"]
    assert not [a for a in srun if a.startswith("--container")]


@pytest.mark.slow
def test_dry_run_rejects_a_bad_override(tmp_path):
    env = slurm_env(tmp_path, 2)
    env["DRY_RUN"] = "1"
    res = run_script("pretrain_7b", env, "train.lr=1e-5")  # lr lives in optim
    assert res.returncode == 2
    assert "train.lr" in res.stdout


@pytest.mark.slow
def test_local_dry_run_cpu(tmp_path):
    env = slurm_env(tmp_path, 1)
    env.update(DRY_RUN="1", NPROC="2")
    res = run_script("local", env, "model=tiny", "train.global_batch_size=4")
    assert res.returncode == 0, res.stdout + res.stderr
    cmd = shlex.split(re.search(r"^torchrun: (.*)$", res.stdout, re.M).group(1))
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd
    assert cmd[-2:] == ["model=tiny", "train.global_batch_size=4"]
    lay = parse_dry_run_layout(res.stdout)
    assert (lay["world"], lay["DP"]) == ("2", "2")


def parse_dry_run_layout(out: str) -> dict:
    return dict(kv.split("=", 1) for kv in re.search(r"^layout: (.*)$", out, re.M).group(1).split())


# ---- a launch through the fake srun --------------------------------------------------------------


def _launch_env(tmp_path: Path) -> dict[str, str]:
    env = slurm_env(tmp_path, 2, job_id=31337, job_name="polar-sft")
    env.update(GPUS_PER_NODE="2", CONTAINER_IMAGE="none")
    return env


def _ranks(tmp_path: Path, world: int) -> list[dict]:
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.slow
def test_launch_sets_torch_env_per_rank(tmp_path):
    env = _launch_env(tmp_path)
    res = run_script("sft_1_8b", env, "train.global_batch_size=8")
    assert res.returncode == 0, res.stdout + res.stderr
    ranks = _ranks(tmp_path, 4)
    assert [(r["RANK"], r["LOCAL_RANK"], r["NODE_RANK"]) for r in ranks] == [
        ("0", "0", "0"),
        ("1", "1", "0"),
        ("2", "0", "1"),
        ("3", "1", "1"),
    ]
    assert {(r["WORLD_SIZE"], r["MASTER_ADDR"], r["MASTER_PORT"]) for r in ranks} == {
        ("4", "gpu001", "31337")
    }
    assert ranks[0]["argv"][:2] == ["-m", "megatron_polar.train"]
    assert ranks[0]["argv"][-1] == "train.global_batch_size=8"
    assert ranks[0]["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    assert not (tmp_path / "scontrol.calls").exists()  # a clean finish does not requeue
    assert (tmp_path / "logs" / "launcher.log").is_file()


def _start_and_signal(tmp_path: Path, sig: signal.Signals) -> tuple[int, list[dict]]:
    env = _launch_env(tmp_path)
    env["FAKE_TRAIN_WAIT"] = "1"
    proc = subprocess.Popen(
        ["bash", str(LAUNCH / "sft_1_8b.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 30
    while len(list(tmp_path.glob("rank*.json.started"))) < 4 or not (tmp_path / "srun.ready").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    os.kill(proc.pid, sig)  # what `#SBATCH --signal=B:USR1@600` does: the batch shell only
    out, _ = proc.communicate(timeout=30)
    assert "forwarding to srun" in out, out
    return proc.returncode, _ranks(tmp_path, 4)


@pytest.mark.slow
def test_usr1_reaches_every_rank_and_requeues(tmp_path):
    rc, ranks = _start_and_signal(tmp_path, signal.SIGUSR1)
    assert rc == 0
    assert all(r["signals"] == ["USR1"] for r in ranks)
    calls = [json.loads(line) for line in (tmp_path / "scontrol.calls").read_text().splitlines()]
    assert calls == [["requeue", "31337"]]


@pytest.mark.slow
def test_term_is_forwarded_without_requeue(tmp_path):
    rc, ranks = _start_and_signal(tmp_path, signal.SIGTERM)
    assert rc == 0
    assert all(r["signals"] == ["TERM"] for r in ranks)
    assert not (tmp_path / "scontrol.calls").exists()
