"""A NaN loss is caught on the step it happens: skipped (parameters untouched) or stopped, by policy."""

from __future__ import annotations

import math

import pytest

from tests.support.launcher import run_distributed
from tests.support.training_runs import base_overrides, read_metrics, train_worker_with_nan

pytestmark = pytest.mark.distributed


def test_nan_step_is_skipped_and_training_continues(task, tmp_path):
    run_dir = tmp_path / "run"
    [result] = run_distributed(
        train_worker_with_nan, 1, base_overrides(task, run_dir, 6, ["train.nan_policy=skip"]), 3
    )
    assert result["reason"] == "finished" and result["step"] == 6
    rows = read_metrics(run_dir)
    assert [r["skipped"] for r in rows] == [0, 0, 1, 0, 0, 0]
    assert math.isnan(rows[2]["loss"])
    assert all(
        math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for i, r in enumerate(rows) if i != 2
    )
    # The skipped update did not advance the schedule: step 4 runs at step 3's learning rate.
    assert rows[3]["lr"] == rows[2]["lr"]
    assert math.isfinite(result["valid"]["loss"])


def test_nan_stops_the_run_with_a_clear_message(
    task,
    tmp_path,
):
    [result] = run_distributed(
        train_worker_with_nan, 1, base_overrides(task, tmp_path / "run", 6, ["train.nan_policy=stop"]), 2
    )
    assert "non-finite loss/gradient at step 2" in result["error"]
    assert "train.nan_policy" in result["error"]
