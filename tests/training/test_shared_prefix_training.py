"""A short CPU training run with ``data.share_prefix=true``: real trainer, tiny model, loss falls."""

from __future__ import annotations

import pytest

from megatron_polar.data.pair_dataset import open_pair_dataset
from tests.support.launcher import run_distributed
from tests.support.training_runs import base_overrides, read_metrics, train_worker

pytestmark = pytest.mark.distributed

STEPS = 60


def test_shared_prefix_run_takes_its_steps_and_learns(task, tmp_path):
    run_dir = tmp_path / "run"
    overrides = base_overrides(task, run_dir, STEPS, ["data.share_prefix=true"])
    [result] = run_distributed(train_worker, 1, overrides, timeout=400)
    train = read_metrics(run_dir)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert result["reason"] == "finished"
    first = sum(r["loss"] for r in train[:10]) / 10
    last = sum(r["loss"] for r in train[-10:]) / 10
    assert first == pytest.approx(0.693, abs=0.02)  # zero reward head: every pair starts at log 2
    assert last < first - 0.1, (first, last)
    assert result["valid"]["accuracy"] > 0.55, result["valid"]
    # Tokens processed count each pair's shared prefix once: fewer than the pairs' two sequences.
    ds = open_pair_dataset(task["train"])
    lengths, prefix = ds.pair_lengths(), ds.prefix_lengths()
    per_pair_shared = (lengths.sum(axis=1) - prefix).mean()
    per_pair_whole = lengths.sum(axis=1).mean()
    got = sum(r["tokens_per_step"] for r in train) / sum(r["pairs_per_step"] for r in train)
    assert got == pytest.approx(per_pair_shared, rel=0.15) and got < 0.95 * per_pair_whole
    assert all(r["pairs_per_s"] > 0 for r in train)
