"""``build`` and ``merge`` run without importing torch or megatron-core.

Each build, merge and SLURM array task is a fresh process; importing megatron-core's
``indexed_dataset`` (torch and the whole ``megatron.core`` package) cost ~11 s of CPU in each, which
capped 2 shards on 2 cores at 1.73x of one. So a fresh interpreter here imports the CLI and the build
modules, runs a 2-shard ``build`` (one in-process worker, so the encoding runs in this interpreter), a
``merge`` and a one-process ``build`` through the CLI's ``main``, logging on, and reports every module
loaded. ``inspect`` and ``add-prefix-lengths`` open a built dataset with megatron-core's own
``IndexedDataset`` (``megatron_polar.data.pair_dataset.open_pair_dataset``) and are not covered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.text_data import make_triples, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import json, sys
import data_tools.__main__, data_tools.build, data_tools.encode, data_tools.merge
from data_tools.__main__ import main

src, model, out = sys.argv[1:4]
common = ["build", src, "--tokenizer", model, "--max-length", "256", "--max-response-length", "100",
          "--chunk-rows", "8", "--no-progress"]
status = [main(["--log-level", "INFO", *common, "-o", out + "/one"])]
for i in range(2):
    status.append(main([*common, "-o", out + "/two", "--num-shards", "2", "--shard-index", str(i)]))
status.append(main(["merge", "build", "-o", out + "/two", "--num-shards", "2"]))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "megatron"))
print(json.dumps({"status": status, "heavy": heavy}))
"""


def test_build_and_merge_load_neither_torch_nor_megatron(tmp_path, sp_model):
    src = write_jsonl(tmp_path / "in.jsonl", make_triples(40, seed=7))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, src, sp_model, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["status"] == [0, 0, 0, 0], proc.stderr
    assert report["heavy"] == [], f"imported: {report['heavy'][:10]}"
    assert "built" in proc.stderr  # the log records were emitted (each asks for the rank)
    for ext in (".bin", ".idx", ".prefix.npy"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"two{ext}").read_bytes()
