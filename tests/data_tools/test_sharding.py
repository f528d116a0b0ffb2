"""Sharded ``build`` and ``pair``: N shards merged equal the one-process output byte for byte, line
numbers stay global, and an incomplete shard set is refused."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from data_tools import index_builder
from data_tools.__main__ import main
from data_tools.build import BuildConfig, build_dataset
from data_tools.merge import merge_build, merge_pair
from data_tools.pairing import PairConfig, run_pair
from data_tools.records import RecordError, iter_raw_lines, validate_triple
from data_tools.sharding import ShardSpec, iter_range_lines, plan_ranges, shard_path, shard_prefix
from megatron_polar.data.pair_dataset import open_pair_dataset
from tests.data_tools.test_pairing import rollouts
from tests.support.text_data import make_triples, write_jsonl

CFG = BuildConfig(chunk_rows=16, max_length=256, max_response_length=100, progress=False)
# Manifest fields that must not depend on sharding (timings and split-file hashes may).
DATA_FIELDS = (
    "dtype",
    "tokenizer",
    "max_length",
    "counts",
    "tokens",
    "pair_length_histogram",
    "packing_projection",
)


def _inputs(tmp_path) -> list[str]:
    """Two plain files (with blank, bad and over-long lines) and a gzip file."""
    a = (
        make_triples(70, long_every=9)
        + ["{bad json"]
        + make_triples(20, seed=3)
        + [""]
        + make_triples(5, seed=4)
    )
    b = make_triples(40, seed=1)
    b.insert(17, "x" * 3000)  # over --max-line-bytes below
    c = make_triples(30, seed=2) + ['{"prompt": "no other fields"}']
    return [
        write_jsonl(tmp_path / "a.jsonl", a),
        write_jsonl(tmp_path / "b.jsonl", b),
        write_jsonl(tmp_path / "c.jsonl.gz", c, compress="gz"),
    ]


def _cfg(**kw) -> BuildConfig:
    return BuildConfig(**{**CFG.__dict__, "max_line_bytes": 2048, **kw})


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shard_ranges_yield_every_line_once_with_global_numbers(tmp_path, count):
    paths = _inputs(tmp_path)
    want = [(p, n, raw) for p in paths for n, raw in iter_raw_lines(p, 2048)]
    got = []
    for i in range(count):
        for rng in plan_ranges(paths, ShardSpec(i, count)):
            got += [
                (paths[rng.file_no], n, raw) for n, raw in iter_range_lines(paths[rng.file_no], rng, 2048)
            ]
    assert got == want


def test_three_shards_merge_to_the_one_process_build(tmp_path, sp_tok):
    paths = _inputs(tmp_path)
    one = build_dataset(paths, str(tmp_path / "one"), sp_tok, _cfg())
    prefix = str(tmp_path / "sharded")
    for i in range(3):
        shard = build_dataset(paths, prefix, sp_tok, _cfg(num_shards=3, shard_index=i, workers=1 + i % 2))
        assert shard["shard"]["index"] == i and shard["counts"]["rows_read"] > 0
        assert os.path.exists(shard_prefix(prefix, i, 3) + ".manifest.json")
    merged = merge_build(prefix, 3)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"sharded{ext}").read_bytes()
    for key in DATA_FIELDS:
        assert merged[key] == one[key], key
    assert merged["counts"]["skipped"]["malformed_json"]["examples"][0].startswith(f"{paths[0]}:71:")
    assert [i["lines"] for i in merged["inputs"]] == [i["lines"] for i in one["inputs"]]
    assert merged["inputs"][2]["sha256"] == one["inputs"][2]["sha256"]  # the .gz went whole to one shard
    assert len(open_pair_dataset(prefix)) == one["counts"]["pairs_written"]


def _valid(row: dict) -> bool:
    try:
        validate_triple(row)
    except RecordError:
        return False
    return True


def test_strict_shard_names_the_global_line(tmp_path, sp_tok):
    rows = [r for r in make_triples(120) if _valid(r)][:80]
    rows.insert(60, "{bad json")
    paths = [write_jsonl(tmp_path / "a.jsonl", rows)]
    spec = ShardSpec(1, 2)
    (rng,) = plan_ranges(paths, spec)
    assert 61 in [n for n, _ in iter_range_lines(paths[0], rng)]  # the bad line is in the second shard
    with pytest.raises(RecordError, match=rf"{paths[0]}:61: malformed_json"):
        build_dataset(paths, str(tmp_path / "s"), sp_tok, _cfg(strict=True, num_shards=2, shard_index=1))
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl"]  # nothing left behind


def test_merge_refuses_incomplete_shards(tmp_path, sp_tok, monkeypatch):
    paths = _inputs(tmp_path)
    prefix = str(tmp_path / "ds")
    build_dataset(paths, prefix, sp_tok, _cfg(num_shards=2, shard_index=0))

    def killed(self, path_prefix):
        raise KeyboardInterrupt  # the task dies while merging its chunks

    monkeypatch.setattr(index_builder.IndexedDatasetWriter, "add_index", killed)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(paths, prefix, sp_tok, _cfg(num_shards=2, shard_index=1))
    monkeypatch.undo()
    assert not os.path.exists(shard_prefix(prefix, 1, 2) + ".manifest.json")
    with pytest.raises(FileNotFoundError, match="1 of 2 shards"):
        merge_build(prefix, 2)
    assert not os.path.exists(prefix + ".bin")
    build_dataset(paths, prefix, sp_tok, _cfg(num_shards=2, shard_index=1))
    merge_build(prefix, 2, remove_shards=True)
    assert not any(".shard-" in name for name in os.listdir(tmp_path))


def test_pair_shards_merge_to_the_one_process_output(tmp_path):
    rows = rollouts(60, policies=("p1", "p2", "p3", "p4", "h1"))
    half = len(rows) // 2
    paths = [
        write_jsonl(tmp_path / "r1.jsonl", rows[:half] + ["{bad"]),
        write_jsonl(tmp_path / "r2.jsonl", rows[half:]),
    ]
    cfg = PairConfig(partitions=8, holdout_policies=frozenset({"h1"}), pairs_per_prompt=2)
    one = run_pair(paths, str(tmp_path / "one.jsonl"), cfg, str(tmp_path / "one.hold.jsonl"))
    out, hold = str(tmp_path / "pairs.jsonl"), str(tmp_path / "pairs.hold.jsonl")
    for i in range(3):
        run_pair(paths, out, cfg, hold, shard=ShardSpec(i, 3))
        assert os.path.exists(shard_path(out, i, 3) + ".done.json")
    total = merge_pair(out, 3, hold)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "pairs.jsonl").read_bytes()
    assert (tmp_path / "one.hold.jsonl").read_bytes() == (tmp_path / "pairs.hold.jsonl").read_bytes()
    assert os.path.getsize(out) > 0 and os.path.getsize(hold) > 0
    want = one.as_dict()
    for key in ("rows_read", "prompts", "pairs_written", "holdout_pairs_written", "duplicate_responses"):
        assert total[key] == want[key], key
    assert total["bad_rows"] == want["bad_rows"]


def test_pair_merge_refuses_a_missing_shard_and_more_shards_than_partitions(tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", rollouts(10))
    out = str(tmp_path / "p.jsonl")
    run_pair([src], out, PairConfig(partitions=4), shard=ShardSpec(0, 2))
    with pytest.raises(FileNotFoundError, match="1 of 2 pair shards"):
        merge_pair(out, 2)
    with pytest.raises(ValueError, match="exceeds --partitions"):
        run_pair([src], out, PairConfig(partitions=4), shard=ShardSpec(0, 5))


def test_cli_shards_and_merge(tmp_path, sp_model, capsys):
    paths = _inputs(tmp_path)[:2]
    prefix = str(tmp_path / "cli")
    common = [
        "build",
        *paths,
        "-o",
        prefix,
        "--tokenizer",
        sp_model,
        "--max-length",
        "256",
        "--max-response-length",
        "100",
        "--no-progress",
    ]
    assert main([*common, "--num-shards", "2", "--shard-index", "2"]) == 1  # out of range: a usage error
    for i in range(2):
        assert main([*common, "--num-shards", "2", "--shard-index", str(i)]) == 0
    capsys.readouterr()
    assert main(["merge", "build", "-o", prefix, "--num-shards", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs_written"] == len(open_pair_dataset(prefix))


def test_more_shards_than_rows_leaves_empty_shards_that_merge(tmp_path, sp_tok):
    src = write_jsonl(tmp_path / "few.jsonl", [r for r in make_triples(12) if _valid(r)][:4])
    one = build_dataset([src], str(tmp_path / "one"), sp_tok, _cfg())
    prefix = str(tmp_path / "many")
    rows = [
        build_dataset([src], prefix, sp_tok, _cfg(num_shards=9, shard_index=i))["counts"]["rows_read"]
        for i in range(9)
    ]
    assert rows.count(0) >= 5 and sum(rows) == one["counts"]["rows_read"]
    merge_build(prefix, 9)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"many{ext}").read_bytes()


def test_merge_refuses_a_shard_whose_index_disagrees_with_its_manifest(tmp_path, sp_tok):
    """A shard's .bin/.idx swapped for another shard's: merge names the file instead of joining it."""
    paths = _inputs(tmp_path)
    prefix = str(tmp_path / "ds")
    for i in range(2):
        build_dataset(paths, prefix, sp_tok, _cfg(num_shards=2, shard_index=i))
    first, second = shard_prefix(prefix, 0, 2), shard_prefix(prefix, 1, 2)
    for ext in (".bin", ".idx"):
        os.replace(first + ext, second + ext)
        shutil.copyfile(second + ext, first + ext)
    with pytest.raises(ValueError, match=rf"{second}.idx: \d+ documents, its manifest says \d+ pairs"):
        merge_build(prefix, 2)
    assert not os.path.exists(prefix + ".bin") and not os.path.exists(prefix + ".idx")
