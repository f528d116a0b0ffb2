"""The GPU training path end to end: TE spec, megatron-core DDP, the distributed optimizer, NCCL, the
schedules, save and resume (FusedAdam state), fp16 loss scaling, and a local-spec checkpoint loaded into
the TE model. Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.workers import local_checkpoint_into_te
from tests.support.launcher import run_distributed
from tests.support.synthetic_task import build_task
from tests.support.training_runs import base_overrides, read_metrics, train_worker

pytestmark = pytest.mark.gpu
GPU_RUN = [
    "train.precision=bf16",
    "model.transformer_impl=transformer_engine",
    "parallel.use_distributed_optimizer=true",
    "parallel.overlap_grad_reduce=true",
    "parallel.overlap_param_gather=true",
]


@pytest.fixture(scope="module")
def gpu_task(tmp_path_factory):
    return build_task(tmp_path_factory.mktemp("gpu_task"), n_train=128, n_valid=32)


def _world() -> int:
    return 2 if torch.cuda.device_count() >= 2 else 1


@pytest.mark.parametrize("dist_opt", [True, False], ids=["dist-opt", "no-dist-opt"])
def test_resume_continues_the_uninterrupted_run(gpu_task, tmp_path, dist_opt):
    extra = [*GPU_RUN, f"parallel.use_distributed_optimizer={str(dist_opt).lower()}"]
    straight = tmp_path / "straight"
    run_distributed(train_worker, _world(), base_overrides(gpu_task, straight, 5, extra))
    broken = tmp_path / "broken"
    first = run_distributed(
        train_worker, _world(), base_overrides(gpu_task, broken, 5, [*extra, "train.exit_after_iters=3"])
    )
    assert first[0]["reason"] == "exit_after_iters"
    run_distributed(
        train_worker, _world(), base_overrides(gpu_task, broken, 5, extra)
    )  # resumes (TE FusedAdam)
    want = [(r["step"], r["loss"]) for r in read_metrics(straight)]
    got = [(r["step"], r["loss"]) for r in read_metrics(broken)]
    assert [s for s, _ in got] == [1, 2, 3, 4, 5]
    for (s, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=2e-2), (s, a, b)


def test_fp16_trains_with_loss_scaling(gpu_task, tmp_path):
    run_dir = tmp_path / "fp16"
    run_distributed(
        train_worker, 1, base_overrides(gpu_task, run_dir, 30, [*GPU_RUN, "train.precision=fp16"])
    )
    rows = read_metrics(run_dir)
    applied = [r for r in rows if not r["skipped"]]
    assert len(applied) >= 20 and all(r["grad_norm"] > 1e-4 for r in applied)
    assert sum(r["loss"] for r in rows[-5:]) / 5 < rows[0]["loss"] - 0.02


def test_local_spec_checkpoint_scores_the_same_in_the_te_model(tmp_path):
    [out] = run_distributed(local_checkpoint_into_te, 1, str(tmp_path / "ckpt"))
    torch.testing.assert_close(out["transformer_engine"], out["local"], atol=1e-3, rtol=0)
