"""``launch/build_data.sh``: the SLURM array it submits, and its shard and merge stages run for real."""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from data_tools.__main__ import main
from tests.support.text_data import make_triples, words, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "build_data.sh"


def _env(tmp_path: Path, **kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "POLAR_", "DRY_RUN"))}
    return {**env, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), **kw}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


def test_submit_dry_run_prints_the_array_and_the_dependent_merge(tmp_path):
    res = _run(
        _env(tmp_path, DRY_RUN="1", NUM_SHARDS="12"),
        "out/ds",
        "tok.model",
        "a.jsonl",
        "b.jsonl",
        "--",
        "--max-length",
        "8192",
    )
    assert res.returncode == 0, res.stderr
    shards, merge = (shlex.split(line) for line in res.stdout.strip().splitlines())
    assert shards[0] == merge[0] == "sbatch"
    assert "--array=0-11" in shards and not any(a.startswith("--dependency") for a in shards)
    assert "--dependency=afterok:ARRAY_JOB_ID" in merge
    assert any("POLAR_BUILD_STAGE=shard" in a for a in shards) and any(
        "POLAR_BUILD_STAGE=merge" in a for a in merge
    )
    assert shards[-7:] == ["out/ds", "tok.model", "a.jsonl", "b.jsonl", "--", "--max-length", "8192"]


def test_submit_chains_the_merge_on_the_array_job_id(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "sbatch.log"
    fake = bindir / "sbatch"
    fake.write_text(f'#!/bin/bash\necho "$*" >> {log}\necho "4242;cluster"\n')
    fake.chmod(0o755)
    env = _env(tmp_path, NUM_SHARDS="3", PATH=f"{bindir}:{os.environ['PATH']}")
    res = _run(env, "ds", "tok.model", "a.jsonl")
    assert res.returncode == 0, res.stderr
    first, second = log.read_text().splitlines()
    assert "--array=0-2" in first and "--dependency=afterok:4242" in second
    assert "array job 4242" in res.stdout


def test_bad_usage_is_refused(tmp_path):
    assert _run(_env(tmp_path), "ds", "tok.model").returncode == 1
    res = _run(_env(tmp_path, NUM_SHARDS="0"), "ds", "tok.model", "a.jsonl")
    assert res.returncode == 1 and "NUM_SHARDS" in res.stderr
    res = _run(_env(tmp_path, POLAR_BUILD_STAGE="shard"), "ds", "tok.model", "a.jsonl")
    assert res.returncode != 0 and "SLURM_ARRAY_TASK_ID" in res.stderr


@pytest.mark.slow
def test_array_tasks_and_merge_equal_a_one_process_build(tmp_path):
    from data_tools.build import BuildConfig, build_dataset
    from megatron_polar.data.tokenizer import load_tokenizer, train_sentencepiece

    rng = random.Random(0)
    model = str(train_sentencepiece([words(rng, 20) for _ in range(400)], tmp_path / "tok", 300))
    inputs = [
        write_jsonl(tmp_path / "a.jsonl", make_triples(60)),
        write_jsonl(tmp_path / "b.jsonl", make_triples(40, seed=1)),
    ]
    opts = ["--", "--max-length", "256", "--max-response-length", "100"]
    cfg = BuildConfig(max_length=256, max_response_length=100, progress=False)
    build_dataset(inputs, str(tmp_path / "one"), load_tokenizer(model), cfg)
    prefix = str(tmp_path / "arr")
    # Array task 1 runs the script for real; task 0 and the merge run in this process (each script run
    # imports torch, which takes minutes on a loaded 2-core machine), the merge stage's command is checked.
    env = _env(
        tmp_path, POLAR_BUILD_STAGE="shard", NUM_SHARDS="2", SLURM_ARRAY_TASK_ID="1", CPUS_PER_TASK="1"
    )
    res = _run(env, prefix, model, *inputs, *opts)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["prefix"] == prefix
    build_dataset(inputs, prefix, load_tokenizer(model), replace(cfg, num_shards=2, shard_index=0))
    res = _run(
        _env(tmp_path, POLAR_BUILD_STAGE="merge", NUM_SHARDS="2", DRY_RUN="1"), prefix, model, *inputs, *opts
    )
    merge = shlex.split(res.stdout)
    assert merge[1:] == ["-m", "data_tools", "merge", "build", "-o", prefix, "--num-shards", "2"]
    assert main(merge[3:]) == 0
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"arr{ext}").read_bytes()
