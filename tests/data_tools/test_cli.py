"""``python -m data_tools``: every command end to end through ``main(argv)``."""

from __future__ import annotations

import json

import pytest

from data_tools.__main__ import main
from megatron_polar.data.pair_dataset import open_pair_dataset
from tests.support.text_data import make_triples, write_jsonl


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(c in out for c in ("pair", "rank", "build", "inspect"))


def test_pair_build_inspect_pipeline(tmp_path, sp_model, capsys):
    rows = [
        {"prompt": f"q{i}", "policy": p, "response": f"{p} says {k} about {i}"}
        for i in range(10)
        for p in ("a", "b", "c")
        for k in range(2)
    ]
    src = write_jsonl(tmp_path / "roll.jsonl.zst", rows, compress="zst")
    pairs = str(tmp_path / "pairs.jsonl")
    assert (
        main(
            [
                "pair",
                src,
                "-o",
                pairs,
                "--holdout-policies",
                "c",
                "--holdout-output",
                str(tmp_path / "hold.jsonl"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["pairs_written"] == 10
    prefix = str(tmp_path / "ds")
    assert (
        main(["build", pairs, "-o", prefix, "--tokenizer", sp_model, "--workers", "2", "--no-progress"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["pairs_written"] == 10
    assert main(["build", pairs, "-o", prefix, "--tokenizer", sp_model]) == 2  # refuses to overwrite
    assert main(["inspect", prefix, "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert (
        "⟦BOS⟧" in out and "⟦SPLIT⟧" in out and "⟦REWARD⟧" in out and "[chosen" in out and "[rejected" in out
    )
    assert main(["inspect", prefix, "--manifest"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["pairs_written"] == 10
    # --json: one object per pair, the ids exactly as stored (the model's input).
    assert main(["inspect", prefix, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ds = open_pair_dataset(prefix)
    assert [r["pair"] for r in records] == list(range(10))
    for r in records:
        chosen, rejected = ds.pair(r["pair"])
        assert r["chosen_ids"] == chosen.tolist() and r["rejected_ids"] == rejected.tolist()
    assert main(["inspect", prefix, "--json", "--start", "8", "-n", "5"]) == 0
    assert [json.loads(line)["pair"] for line in capsys.readouterr().out.splitlines()] == [8, 9]


def test_rank_cli(tmp_path, capsys):
    src = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "q", "responses": ["a", "b", "c", "d"]}])
    assert main(["rank", src, "-o", str(tmp_path / "o.jsonl"), "--mode", "all"]) == 0
    assert json.loads(capsys.readouterr().out)["triples_written"] == 3


def test_errors_are_reported_with_status(tmp_path, sp_model, caplog):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(2) + ["{bad"])
    assert main(["build", src, "-o", str(tmp_path / "x"), "--tokenizer", sp_model, "--strict"]) == 1
    assert (
        main(["build", src, "-o", str(tmp_path / "y"), "--tokenizer", sp_model, "--reward-token", "<nope>"])
        == 1
    )
    assert main(["inspect", str(tmp_path / "missing")]) == 1
