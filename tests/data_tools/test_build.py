"""``build``: exact round trip, determinism across worker counts, manifest, bad input, atomic outputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import data_tools.build as build_mod
from data_tools.build import BuildConfig, build_dataset, token_dtype
from data_tools.records import InputError, RecordError, validate_triple
from megatron_polar.data.format import build_polar_text, encode_pair
from megatron_polar.data.pair_dataset import open_pair_dataset, read_manifest
from tests.support.text_data import make_triples, write_jsonl

CFG = BuildConfig(chunk_rows=16, max_length=256, max_response_length=100, progress=False)


def outputs(prefix: str) -> list[str]:
    return [p for p in (f"{prefix}.bin", f"{prefix}.idx", f"{prefix}.manifest.json") if os.path.exists(p)]


def test_round_trip_token_and_text_exact(tmp_path, sp_tok):
    rows = make_triples(60, long_every=7)
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    manifest = build_dataset([src], str(tmp_path / "ds"), sp_tok, CFG)
    ds = open_pair_dataset(str(tmp_path / "ds"))
    assert len(ds) == 60 == manifest["counts"]["pairs_written"]
    for i, row in enumerate(rows):
        t = validate_triple(row)
        pair = encode_pair(
            sp_tok,
            t.prompt,
            t.reference,
            t.chosen,
            t.rejected,
            max_length=256,
            max_response_length=100,
            wrapper=t.wrapper,
        )
        for seq, cand, expected in zip(ds.pair(i), (t.chosen, t.rejected), pair):
            assert seq.tolist() == expected.ids
            assert seq[0] == sp_tok.bos_id and seq[-1] == sp_tok.reward_token_id
            if not expected.info.truncated:
                # Untruncated: the sequence is exactly the POLAR string (the tiny model round-trips text).
                assert sp_tok.decode(seq[1:-1]) == build_polar_text(
                    t.prompt, t.reference, cand, "<|reward|>", t.wrapper
                )
    assert ds.pair_lengths().shape == (60, 2)
    assert manifest["counts"]["truncated_pairs"]["chosen"] > 0  # long rows were cut


def test_workers_and_chunking_do_not_change_bytes(tmp_path, sp_tok):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(300) + ["{bad"] + make_triples(50, seed=1))
    m1 = build_dataset([src], str(tmp_path / "w1"), sp_tok, CFG)
    m2 = build_dataset([src], str(tmp_path / "w2"), sp_tok, BuildConfig(**{**CFG.__dict__, "workers": 2}))
    m3 = build_dataset([src], str(tmp_path / "w3"), sp_tok, BuildConfig(**{**CFG.__dict__, "chunk_rows": 7}))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"w1{ext}").read_bytes() == (tmp_path / f"w2{ext}").read_bytes()
        assert (tmp_path / f"w1{ext}").read_bytes() == (tmp_path / f"w3{ext}").read_bytes()
    assert m1["counts"] == m2["counts"] == m3["counts"] and m2["build"]["workers"] == 2


def test_manifest_contents(tmp_path, sp_tok, sp_model):
    src = write_jsonl(tmp_path / "t.jsonl.gz", make_triples(40), compress="gz")
    build_dataset([src], str(tmp_path / "ds"), sp_tok, CFG)
    m = read_manifest(str(tmp_path / "ds"))
    assert (
        m["format_version"] == 2 and m["dtype"] == "uint16" and m["sequence_order"] == ["chosen", "rejected"]
    )
    assert m["inputs"][0]["path"] == os.path.abspath(src) and len(m["inputs"][0]["sha256"]) == 64
    assert m["inputs"][0]["size"] == os.path.getsize(src) and m["inputs"][0]["lines"] == 40
    tok = m["tokenizer"]
    assert (
        tok["path"] == os.path.abspath(sp_model)
        and tok["sha256"] == sp_tok.sha256
        and tok["kind"] == "sentencepiece"
    )
    assert (tok["bos_id"], tok["split_token_id"], tok["reward_token_id"]) == (1, 3, 4)
    assert (m["max_length"], m["max_response_length"]) == (256, 100)
    assert m["counts"]["rows_read"] == 40 and m["counts"]["skipped_total"] == 0
    assert sum(m["pair_length_histogram"]["counts"]) == 40
    lengths = open_pair_dataset(str(tmp_path / "ds")).pair_lengths()
    assert m["tokens"]["total"] == int(lengths.sum()) and m["tokens"]["chosen"] == int(lengths[:, 0].sum())
    assert set(m["packing_projection"]["rows"]) == {"8192", "16384", "32768", "65536"}


def test_token_dtype():
    assert token_dtype(300) == np.uint16 and token_dtype(92544) == np.int32 and token_dtype(65500) == np.int32


BAD_ROWS = [
    ("{not json", "malformed_json"),
    ({"prompt": "p", "reference": "r", "chosen": "c"}, "missing_field"),
    ({"prompt": "p", "reference": 5, "chosen": "c", "rejected": "j"}, "wrong_type"),
    ({"prompt": "p", "reference": [{"role": "a"}], "chosen": "c", "rejected": "j"}, "wrong_type"),
    ({"prompt": "", "reference": "r", "chosen": "c", "rejected": "j"}, "empty_field"),
    (b'{"prompt": "\xff", "reference": "r", "chosen": "c", "rejected": "j"}', "invalid_utf8"),
    ("[1, 2]", "not_an_object"),
]


@pytest.mark.parametrize("bad, reason", BAD_ROWS)
def test_bad_rows_skipped_or_strict(tmp_path, sp_tok, bad, reason):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(3) + [bad] + make_triples(2, seed=5))
    m = build_dataset([src], str(tmp_path / "ok"), sp_tok, CFG)
    assert m["counts"]["pairs_written"] == 5 and m["counts"]["skipped"][reason]["count"] == 1
    assert m["counts"]["skipped"][reason]["examples"][0].startswith(f"{src}:4")
    with pytest.raises(RecordError, match=rf"t.jsonl:4: {reason}"):
        build_dataset(
            [src], str(tmp_path / "strict"), sp_tok, BuildConfig(**{**CFG.__dict__, "strict": True})
        )
    assert outputs(str(tmp_path / "strict")) == [] and not list(tmp_path.glob("strict.tmp*"))


def test_50mb_line_is_skipped(tmp_path, sp_tok):
    src = tmp_path / "big.jsonl"
    with open(src, "wb") as f:
        f.write(json.dumps(make_triples(1)[0]).encode() + b"\n")
        f.write(
            b'{"prompt": "' + b"x" * (50 << 20) + b'", "reference": "r", "chosen": "c", "rejected": "j"}\n'
        )
        f.write(json.dumps(make_triples(1)[0]).encode() + b"\n")
    m = build_dataset([str(src)], str(tmp_path / "ds"), sp_tok, CFG)
    assert m["counts"]["pairs_written"] == 2 and m["counts"]["skipped"]["line_too_long"]["count"] == 1
    with pytest.raises(RecordError, match=r"big.jsonl:2: line_too_long"):
        build_dataset(
            [str(src)], str(tmp_path / "s"), sp_tok, BuildConfig(**{**CFG.__dict__, "strict": True})
        )


@pytest.mark.parametrize("compress", ["gz", "zst"])
def test_truncated_archive_leaves_nothing(tmp_path, sp_tok, compress):
    src = write_jsonl(tmp_path / f"t.jsonl.{compress}", make_triples(2000), compress=compress)
    data = open(src, "rb").read()
    open(src, "wb").write(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=f"t.jsonl.{compress}"):
        build_dataset([src], str(tmp_path / "ds"), sp_tok, CFG)
    assert outputs(str(tmp_path / "ds")) == [] and not list(tmp_path.glob("ds.tmp*"))


def test_failure_mid_build_leaves_nothing(tmp_path, sp_tok, monkeypatch):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(100))
    real, calls = build_mod.encode_chunk, []

    def flaky(task):
        calls.append(task[0])
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(task)

    monkeypatch.setattr(build_mod, "encode_chunk", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        build_dataset([src], str(tmp_path / "ds"), sp_tok, CFG)
    assert outputs(str(tmp_path / "ds")) == [] and not list(tmp_path.glob("ds.tmp*"))


def test_refuses_to_overwrite(tmp_path, sp_tok):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(10))
    build_dataset([src], str(tmp_path / "ds"), sp_tok, CFG)
    before = (tmp_path / "ds.bin").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_dataset([src], str(tmp_path / "ds"), sp_tok, CFG)
    src2 = write_jsonl(tmp_path / "t2.jsonl", make_triples(4, seed=9))
    build_dataset([src2], str(tmp_path / "ds"), sp_tok, BuildConfig(**{**CFG.__dict__, "overwrite": True}))
    assert (tmp_path / "ds.bin").read_bytes() != before and len(open_pair_dataset(str(tmp_path / "ds"))) == 4


def test_hf_tokenizer_build(tmp_path):
    from megatron_polar.data.tokenizer import load_tokenizer
    from tests.support.tokenizers import make_hf_tokenizer

    tok = load_tokenizer(make_hf_tokenizer(tmp_path))
    rows = make_triples(10)
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    m = build_dataset([src], str(tmp_path / "ds"), tok, CFG)
    assert m["tokenizer"]["kind"] == "hf"
    ds = open_pair_dataset(str(tmp_path / "ds"))
    t = validate_triple(rows[1])
    _, rejected = encode_pair(
        tok,
        t.prompt,
        t.reference,
        t.chosen,
        t.rejected,
        max_length=256,
        max_response_length=100,
        wrapper=t.wrapper,
    )
    assert ds.pair(1)[1].tolist() == rejected.ids


def test_strict_with_workers_stops_and_cleans_up(tmp_path, sp_tok):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(100) + ["{bad"] + make_triples(100, seed=2))
    cfg = BuildConfig(**{**CFG.__dict__, "strict": True, "workers": 2})
    with pytest.raises(RecordError, match=r"t.jsonl:101: malformed_json"):
        build_dataset([src], str(tmp_path / "ds"), sp_tok, cfg)
    assert outputs(str(tmp_path / "ds")) == [] and not list(tmp_path.glob("ds.tmp*"))
