"""The shared-prefix sidecar: recorded by build, byte-identical through sharded build + merge, added to
old datasets by ``add-prefix-lengths``, and a clear error where training needs it and it is missing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_tools.__main__ import main
from data_tools.build import BuildConfig, build_dataset
from data_tools.merge import merge_build
from data_tools.sharding import shard_prefix
from megatron_polar.data import pair_dataset
from megatron_polar.data.pair_dataset import DatasetError, open_pair_dataset, shared_prefix_length
from tests.support.text_data import make_triples, strip_prefix_sidecar, write_jsonl

CFG = BuildConfig(chunk_rows=16, max_length=256, max_response_length=100, progress=False)


def _cfg(**kw) -> BuildConfig:
    return BuildConfig(**{**CFG.__dict__, **kw})


def test_build_records_the_shared_prefix_of_the_stored_ids(tmp_path, sp_tok):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(70, long_every=9))
    manifest = build_dataset([src], str(tmp_path / "ds"), sp_tok, _cfg(workers=2, chunk_rows=9))
    ds = open_pair_dataset(str(tmp_path / "ds"))
    stored = ds.prefix_lengths()
    expected = [shared_prefix_length(*ds.pair(i)) for i in range(len(ds))]
    assert stored.dtype == np.int32 and stored.tolist() == expected
    assert min(expected) > 0  # whole-string POLAR pairs always share [BOS] P R <split> P...
    lengths = ds.pair_lengths()
    assert (stored < lengths.min(axis=1)).all()  # each sequence keeps its own reward token
    entry = manifest["prefix_lengths"]
    assert entry["shared_tokens"] == sum(expected)
    assert entry["footprint_tokens"] == int(lengths.sum()) - sum(expected)


def test_sharded_build_and_merge_give_the_one_process_sidecar(tmp_path, sp_tok):
    rows = make_triples(90, seed=3) + ["{bad"] + make_triples(20, seed=4)
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    one = build_dataset([src], str(tmp_path / "one"), sp_tok, CFG)
    prefix = str(tmp_path / "sharded")
    for i in range(3):
        build_dataset([src], prefix, sp_tok, _cfg(num_shards=3, shard_index=i, workers=1 + i % 2))
    merged = merge_build(prefix, 3, remove_shards=True)
    for ext in (".bin", ".idx", ".prefix.npy"):
        assert (tmp_path / f"one{ext}").read_bytes() == (tmp_path / f"sharded{ext}").read_bytes(), ext
    assert merged["prefix_lengths"] == one["prefix_lengths"]
    assert not any(".shard-" in name for name in os.listdir(tmp_path))


def test_merge_names_a_shard_without_sidecar(tmp_path, sp_tok):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(40))
    prefix = str(tmp_path / "s")
    for i in range(2):
        build_dataset([src], prefix, sp_tok, _cfg(num_shards=2, shard_index=i))
    os.remove(pair_dataset.prefix_lengths_path(shard_prefix(prefix, 1, 2)))
    with pytest.raises(FileNotFoundError, match=r"shard-00001-of-00002\.prefix\.npy.*add-prefix-lengths"):
        merge_build(prefix, 2)
    assert not os.path.exists(prefix + ".manifest.json")


def test_old_dataset_opens_unshared_errors_clearly_and_is_fixed_in_place(tmp_path, sp_tok, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(50, seed=2))
    prefix = str(tmp_path / "old")
    build_dataset([src], prefix, sp_tok, CFG)
    original = open(pair_dataset.prefix_lengths_path(prefix), "rb").read()
    strip_prefix_sidecar(prefix)

    ds = open_pair_dataset(prefix)  # unshared training still works
    assert not ds.has_prefix_lengths and ds.pair_lengths().shape == (50, 2)
    with pytest.raises(DatasetError) as err:
        ds.prefix_lengths()
    msg = str(err.value)
    assert pair_dataset.prefix_lengths_path(prefix) in msg
    assert f"python -m data_tools add-prefix-lengths {prefix}" in msg and "data.share_prefix" in msg

    assert main(["add-prefix-lengths", prefix]) == 0
    assert json.loads(capsys.readouterr().out)["shared_tokens"] > 0
    assert open(pair_dataset.prefix_lengths_path(prefix), "rb").read() == original
    fixed = open_pair_dataset(prefix)
    assert fixed.has_prefix_lengths and len(fixed.prefix_lengths()) == 50
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # nothing left behind
    # A listed sidecar is not silently recomputed.
    assert main(["add-prefix-lengths", prefix]) == 2
    assert main(["add-prefix-lengths", prefix, "--overwrite"]) == 0


def test_a_stale_sidecar_is_refused_on_open(tmp_path, sp_tok):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(20, seed=5))
    prefix = str(tmp_path / "ds")
    build_dataset([src], prefix, sp_tok, CFG)
    arr = np.load(pair_dataset.prefix_lengths_path(prefix))
    arr[0] += 1
    np.save(pair_dataset.prefix_lengths_path(prefix), arr)
    with pytest.raises(DatasetError, match=r"ds\.prefix\.npy: pair 0 holds"):
        open_pair_dataset(prefix)
    np.save(pair_dataset.prefix_lengths_path(prefix), arr[:-1])
    with pytest.raises(DatasetError, match=r"expected int32\(20,\)"):
        open_pair_dataset(prefix)
