"""Failures: SIGTERM then resume reproduces an uninterrupted run exactly; a save killed midway is ignored;
checkpoints reshard across layouts; bad inputs fail before training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_polar.checkpoint import manager
from tests.support.launcher import run_distributed
from tests.support.training_runs import REPO, base_overrides, cli_env, read_metrics, train_cli, train_worker

pytestmark = pytest.mark.distributed
STEPS = 12


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early:\n{proc.stdout.read()}")
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("trainer did not reach the step in time")


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_sigterm_then_resume_matches_uninterrupted_run(task, tmp_path):
    extra = ["parallel.use_distributed_optimizer=true", "optim.lr=1e-3"]
    # The uninterrupted run and the one to be interrupted are independent one-process runs: start both
    # at once so the second core is not idle (each sets OMP_NUM_THREADS=1).
    straight = tmp_path / "straight"
    straight_proc = train_cli(base_overrides(task, straight, STEPS, extra))

    try:
        broken = tmp_path / "broken"
        proc = train_cli(base_overrides(task, broken, STEPS, extra))
        _wait_for_step(proc, broken, STEPS // 2)
        proc.send_signal(signal.SIGTERM)
        out = _finish(proc)
        _finish(straight_proc)
    finally:
        if straight_proc.poll() is None:
            straight_proc.kill()
    assert "save and exit" in out
    stopped = manager.read_train_state(broken / "checkpoints")["step"]
    assert STEPS // 2 <= stopped < STEPS, "the run must stop early on SIGTERM, with a checkpoint"
    out = _finish(train_cli(base_overrides(task, broken, STEPS, extra)))
    assert "resumed from" in out

    want = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in read_metrics(straight)]
    got = [(r["step"], r["loss"], r["grad_norm"], r["lr"]) for r in read_metrics(broken)]
    assert got == want  # bitwise: same samples, same optimizer state, same schedule


KILL_BEFORE_MARKER = """
import os, sys
from megatron_polar.checkpoint import manager
real = manager._atomic_write
def dying_write(path, text):
    if path.name == manager.MARKER and '"step": {step}' in text:
        os._exit(9)  # killed after the shards were written, before the checkpoint was marked complete
    real(path, text)
manager._atomic_write = dying_write
from megatron_polar.train import main
if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""


def test_process_killed_during_save_leaves_previous_checkpoint(task, tmp_path):
    run_dir = tmp_path / "run"
    overrides = base_overrides(task, run_dir, 8, ["checkpoint.save_interval=4"])
    script = tmp_path / "dying_train.py"
    script.write_text(KILL_BEFORE_MARKER.replace("{step}", "8"))
    log = tmp_path / "dying.log"
    with open(log, "w") as out:
        # Own session: the checkpoint writer's helper processes outlive a killed parent; reap them too.
        proc = subprocess.Popen(
            [sys.executable, str(script), *overrides],
            env=cli_env(),
            cwd=REPO,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert returncode == 9, log.read_text()
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "iter_0000008").is_dir() and not manager.is_complete(ckpts / "iter_0000008")
    assert manager.latest_complete(ckpts) == ckpts / "iter_0000004"
    with pytest.raises(manager.CheckpointError, match="incomplete"):
        manager.resolve(ckpts / "iter_0000008")
    out = _finish(train_cli(overrides))
    assert "iter_0000004" in out and "resumed from" in out
    assert manager.latest_complete(ckpts) == ckpts / "iter_0000008"
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 9))


@pytest.mark.parametrize(
    "save_layout,load_layout", [("parallel=tp2", "parallel=pp2"), ("parallel=pp2", "parallel=tp2")]
)
def test_checkpoint_reshards_across_layouts(task, tmp_path, save_layout, load_layout):
    run_dir = tmp_path / "run"
    saved = run_distributed(
        train_worker,
        2,
        base_overrides(task, run_dir, 6, [save_layout, "parallel.use_distributed_optimizer=true"]),
    )
    # Resume at the last step in another layout: nothing left to train, so only validation runs.
    loaded = run_distributed(
        train_worker,
        2,
        base_overrides(task, run_dir, 6, [load_layout, "parallel.use_distributed_optimizer=true"]),
    )
    assert loaded[0]["step"] == 6
    assert loaded[0]["valid"]["loss"] == pytest.approx(saved[0]["valid"]["loss"], abs=1e-5)
    assert loaded[0]["valid"]["accuracy"] == saved[0]["valid"]["accuracy"]


def test_missing_dataset_fails_before_training(tmp_path):
    proc = train_cli([f"data.train=[{{path: {tmp_path / 'nope'}}}]", f"logging.run_dir={tmp_path / 'r'}"])
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "nope.manifest.json" in out


def test_corrupt_checkpoint_fails_with_its_path(task, tmp_path):
    ck = tmp_path / "ck" / "iter_0000003"
    ck.mkdir(parents=True)
    (ck / manager.MARKER).write_text("{}")
    proc = train_cli(base_overrides(task, tmp_path / "r", 2, [f"checkpoint.pretrained={ck}"]))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "iter_0000003" in out


def test_pretrained_checkpoint_of_another_model_is_refused(task, tmp_path):
    """RoPE base or norm epsilon load without a shape error but compute something else: refuse them."""
    run_dir = tmp_path / "pre"
    _finish(train_cli(base_overrides(task, run_dir, 1, [])))
    proc = train_cli(
        base_overrides(
            task,
            tmp_path / "sft",
            1,
            [f"checkpoint.pretrained={run_dir / 'checkpoints'}", "model.rotary_base=500000"],
        )
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "model.rotary_base: checkpoint 10000.0 vs config 500000.0" in out
