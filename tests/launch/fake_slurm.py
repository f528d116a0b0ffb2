"""A fake SLURM for the launch-script tests: ``scontrol``, ``srun`` and ``python`` on a temporary PATH.

- ``scontrol show hostnames LIST`` expands ``prefix[001-114]`` lists; ``scontrol requeue ID`` is recorded.
- ``srun [options] CMD...`` records its argv and starts ``--ntasks`` copies of CMD locally with
  ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NODEID``/``SLURM_NTASKS`` set, forwarding USR1 and TERM to
  them like the real srun.
- ``python`` (given to the scripts as ``$PYTHON``) records the torch.distributed environment and its
  arguments per rank; with ``FAKE_TRAIN_WAIT=1`` it waits for USR1/TERM, records it and exits 0, as the
  trainer does after saving its checkpoint.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

SCONTROL = r"""
import json, os, re, sys
args = sys.argv[1:]
if args[:2] == ["show", "hostnames"]:
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", args[2]):
        m = re.fullmatch(r"(.*)\[(.*)\]", part)
        if not m:
            print(part)
            continue
        for rng in m.group(2).split(","):
            a, _, b = rng.partition("-")
            for i in range(int(a), int(b or a) + 1):
                print(f"{m.group(1)}{i:0{len(a)}d}")
else:
    with open(os.path.join(os.environ["FAKE_SLURM_DIR"], "scontrol.calls"), "a") as f:
        f.write(json.dumps(args) + "\n")
"""

SRUN = r"""
import json, os, signal, subprocess, sys
state = os.environ["FAKE_SLURM_DIR"]
with open(os.path.join(state, "srun.calls"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
args, opts = sys.argv[1:], {}
while args and args[0].startswith("-"):
    key, _, value = args.pop(0).lstrip("-").partition("=")
    opts[key] = value
ntasks = int(opts["ntasks"])
per_node = int(opts.get("ntasks-per-node", ntasks))
procs = []
for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
               SLURM_NODEID=str(rank // per_node), SLURM_NTASKS=str(ntasks), SLURM_STEP_ID="0")
    procs.append(subprocess.Popen(args, env=env))
def forward(signum, frame):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
signal.signal(signal.SIGUSR1, forward)
signal.signal(signal.SIGTERM, forward)
with open(os.path.join(state, "srun.ready"), "w") as f:
    f.write(str(os.getpid()))
sys.exit(max(p.wait() for p in procs))
"""

PYTHON = r"""
import json, os, signal, sys, time
state = os.environ["FAKE_SLURM_DIR"]
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
        "CUDA_DEVICE_MAX_CONNECTIONS", "PYTHONPATH"]
record = {k: os.environ.get(k) for k in keys}
record["argv"] = sys.argv[1:]
got = []
signal.signal(signal.SIGUSR1, lambda s, f: got.append("USR1"))
signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
path = os.path.join(state, f"rank{record['RANK']}.json")
with open(path + ".started", "w") as f:
    f.write("1")
if os.environ.get("FAKE_TRAIN_WAIT") == "1":
    deadline = time.time() + 30
    while not got and time.time() < deadline:
        time.sleep(0.02)
record["signals"] = got
with open(path, "w") as f:
    json.dump(record, f)
sys.exit(0 if got or os.environ.get("FAKE_TRAIN_WAIT") != "1" else 1)
"""


def _write(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def install(tmp: Path) -> Path:
    """Write the fakes into ``tmp/bin`` and return that directory."""
    bindir = tmp / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    _write(bindir / "scontrol", SCONTROL)
    _write(bindir / "srun", SRUN)
    _write(bindir / "python", PYTHON)
    return bindir


def slurm_env(tmp: Path, nodes: int, job_id: int = 4242, job_name: str = "polar-test") -> dict[str, str]:
    """Environment of a batch script in an allocation of ``nodes`` nodes named ``gpu001..``."""
    bindir = install(tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "DRY_RUN"))}
    env.update(
        PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}",
        FAKE_SLURM_DIR=str(tmp),
        SLURM_JOB_ID=str(job_id),
        SLURM_JOB_NAME=job_name,
        SLURM_NNODES=str(nodes),
        SLURM_JOB_NODELIST=f"gpu[001-{nodes:03d}]",
        SLURM_SUBMIT_DIR=str(Path(__file__).resolve().parents[2]),
        PLAN_PYTHON=sys.executable,
        LOG_DIR=str(tmp / "logs"),
        RUN_DIR=str(tmp / "runs"),
    )
    return env
