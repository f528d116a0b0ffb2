"""DatasetManifest: typed accessors over <prefix>.manifest.json, the JSON document left as written."""

import json

import pytest

from megatron_polar.data.pair_dataset import FORMAT_NAME, FORMAT_VERSION, DatasetManifest, read_manifest
from megatron_polar.utils.errors import DatasetError

DOC = {
    "format": FORMAT_NAME,
    "format_version": FORMAT_VERSION,
    "dtype": "uint16",
    "max_length": 512,
    "max_response_length": 128,
    "tokenizer": {"kind": "sentencepiece", "path": "t.model", "reward_token_id": 7, "split_token_id": 6},
    "counts": {"rows_read": 3, "pairs_written": 2},
    "inputs": [{"path": "a.jsonl", "lines": 3}],
}


def test_accessors_mapping_and_round_trip(tmp_path):
    path = tmp_path / "ds.manifest.json"
    path.write_text(json.dumps(DOC, indent=2))
    m = read_manifest(str(tmp_path / "ds"))
    assert (m.format_version, m.dtype, m.max_length, m.max_response_length) == (
        FORMAT_VERSION,
        "uint16",
        512,
        128,
    )
    assert (m.reward_token_id, m.split_token_id, m.pairs_written) == (7, 6, 2)
    assert m.inputs == DOC["inputs"] and m.shard is None
    assert m["tokenizer"]["path"] == "t.model" and dict(m) == DOC and m == DOC
    copy = m.to_dict()
    copy["counts"]["pairs_written"] = 99
    assert m.pairs_written == 2  # a copy, not a view
    assert json.dumps(m.to_dict(), indent=2) == path.read_text()


def test_missing_or_mistyped_keys_name_the_file_and_key():
    m = DatasetManifest({**DOC, "dtype": 16, "counts": {}}, "x.manifest.json")
    with pytest.raises(DatasetError, match=r"x.manifest.json: manifest 'dtype' is 16"):
        _ = m.dtype
    with pytest.raises(DatasetError, match=r"x.manifest.json: manifest has no 'tokens'"):
        _ = m.tokens
    assert m.pairs_written is None  # optional: an older manifest without counts opens as before
