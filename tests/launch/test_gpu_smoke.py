"""The GPU smoke script's CPU-side logic: CLI, isolation of failing checks, table and JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_smoke

SCRIPT = Path(gpu_smoke.__file__)


@pytest.mark.slow
def test_help_lists_every_check():
    res = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in gpu_smoke.CHECKS:
        assert name in res.stdout


def test_table_and_json(tmp_path):
    results = [
        {"name": "versions", "status": "ok", "seconds": 3.2, "figures": {"torch": "2.6", "pip_check_rc": 0}},
        {"name": "fp8", "status": "failed", "seconds": 1.0, "error": "Traceback\nRuntimeError: no GPU"},
    ]
    table = gpu_smoke.format_table(results).splitlines()
    assert table[0].split()[:3] == ["check", "status", "s"]
    assert "torch=2.6" in table[2] and "pip_check_rc=0" in table[2]
    assert table[3].split()[:2] == ["fp8", "failed"] and "RuntimeError: no GPU" in table[3]
    out = tmp_path / "r.json"
    gpu_smoke.write_json_atomic(out, {"checks": results})
    assert json.loads(out.read_text())["checks"][1]["status"] == "failed"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.slow
def test_a_failing_check_is_recorded_and_the_next_still_runs(tmp_path, capsys):
    """On this CPU machine the THD check fails (no CUDA); versions, run after it, still reports."""
    out = tmp_path / "smoke.json"
    rc = gpu_smoke.main(["--checks", "thd_sync,versions", "--out", str(out)])
    assert rc == 1
    report = {c["name"]: c for c in json.loads(out.read_text())["checks"]}
    assert report["thd_sync"]["status"] == "failed" and report["thd_sync"]["error"]
    versions = report["versions"]
    assert versions["status"] == "ok", versions
    import torch

    assert versions["figures"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["figures"]["layer_spec"] == "local"  # no TE here
    printed = capsys.readouterr().out
    assert "thd_sync" in printed and "versions" in printed
