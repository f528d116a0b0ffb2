"""With ``overlap_param_gather`` a checkpoint holds the weights the next step uses, not a mix.

The distributed optimizer updates only this rank's shard of each parameter; with the overlapped gather
the other shards arrive during the next forward pass. A save in between wrote the other ranks' shards
one step old. Runs at DP=2 on gloo with the real megatron-core DDP and distributed optimizer.
"""

from __future__ import annotations

import pytest

from tests.support.launcher import run_distributed
from tests.support.training_runs import base_overrides

pytestmark = pytest.mark.distributed


def save_then_compare(overrides: list[str]) -> dict:
    """Train (the last step saves), gather the weights the next forward would use, reload the
    checkpoint into the same model and report the largest difference per parameter."""

    from megatron_polar.checkpoint import manager
    from megatron_polar.config import load_config
    from megatron_polar.training.trainer import Trainer

    trainer = Trainer(load_config(overrides))
    steps = trainer.train_iters
    for _ in range(steps):
        trainer.train_step()
        trainer.step += 1
    path = trainer.save()
    for m in trainer.model:  # what the next forward pass's pre-hooks would wait for
        m.start_param_sync(force_sync=True)
    live = {n: p.detach().clone() for n, p in trainer.model[0].module.named_parameters()}
    manager.load(path, trainer.chunks)
    diffs = {
        n: float((p.detach() - live[n]).abs().max()) for n, p in trainer.model[0].module.named_parameters()
    }
    trainer.writer.close()
    return {"diffs": diffs, "overlap": trainer.model[0].ddp_config.overlap_param_gather}


def test_checkpoint_weights_equal_the_weights_of_the_next_step(task, tmp_path):
    extra = [
        "parallel.use_distributed_optimizer=true",
        "parallel.overlap_param_gather=true",
        "parallel.overlap_grad_reduce=true",
        "train.precision=bf16",
        "train.global_batch_size=8",
    ]
    results = run_distributed(
        save_then_compare, 2, base_overrides(task, tmp_path / "run", 2, extra), timeout=400
    )
    for rank, res in enumerate(results):
        assert res["overlap"]
        stale = {n: d for n, d in res["diffs"].items() if d != 0.0}
        assert not stale, f"rank {rank}: checkpoint differs from the live weights: {stale}"
