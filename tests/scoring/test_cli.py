"""Batch CLI and preference evaluation: parity with the API, bad rows, atomic and resumable output."""

from __future__ import annotations

import json

import pytest

from megatron_polar import evaluate as evaluate_cli
from megatron_polar import score as score_cli
from megatron_polar.scoring.batch_scoring import score_file
from megatron_polar.scoring.jsonl import BadRowError
from megatron_polar.scoring.preference_accuracy import evaluate_preferences, format_table
from megatron_polar.scoring.requests import parse_row

ROWS = [
    {"prompt": "what is 2+2", "reference": "4", "candidates": ["4", "five", "it is 4 because 2+2"]},
    {
        "prompt": [{"role": "user", "content": "name a pet"}],
        "references": ["cat", "dog"],
        "candidates": ["tree"],
    },
    {"prompt": "say yes", "reference": "yes", "chosen": "yes", "rejected": "no", "id": 7},
]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _common(checkpoint_path, tokenizer_path):
    return [
        "--model",
        checkpoint_path,
        "--tokenizer",
        tokenizer_path,
        "--device",
        "cpu",
        "--batch-tokens",
        "4096",
    ]


def test_score_cli_matches_api_exactly(scorer, checkpoint_path, tokenizer_path, tmp_path):
    src, out = _write(tmp_path / "in.jsonl", ROWS), tmp_path / "out.jsonl"
    rc = score_cli.main(
        [*_common(checkpoint_path, tokenizer_path), "--input", str(src), "--output", str(out)]
    )
    assert rc == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    expect = scorer.score_requests([parse_row(r) for r in ROWS])  # the CLI scores one chunk like this
    assert [g["rewards"] for g in got] == [[s.reward for s in req] for req in expect]
    assert got[2]["id"] == 7 and len(got[2]["rewards"]) == 2  # training triple: [chosen, rejected]
    assert got[2]["rewards"] == pytest.approx(scorer.score("say yes", "yes", ["yes", "no"]), abs=1e-5)
    assert not list(tmp_path.glob("*.partial*"))


def test_bad_row_names_file_and_line_and_leaves_no_output(scorer, tmp_path):
    src = _write(tmp_path / "in.jsonl", [ROWS[0], "{not json", ROWS[1]])
    out = tmp_path / "out.jsonl"
    with pytest.raises(BadRowError, match=r"in\.jsonl:2: invalid JSON"):
        score_file(scorer, src, out, progress=False)
    assert not out.exists()
    _write(src, [ROWS[0], {"prompt": "p", "reference": "r", "candidates": []}])
    with pytest.raises(BadRowError, match=r"in\.jsonl:2: 'candidates' must not be empty"):
        score_file(scorer, src, out, progress=False)
    _write(src, [ROWS[0], {"prompt": "p", "candidates": ["x"]}, "[1, 2]", ROWS[1]])
    stats = score_file(scorer, src, out, progress=False, skip_bad=True)
    assert (stats.rows, stats.skipped) == (2, 2)
    assert len(out.read_text().splitlines()) == 2


def test_resume_continues_an_interrupted_run(scorer, tmp_path, monkeypatch):
    rows = [{"prompt": f"p{i}", "reference": "r", "candidates": [f"c{i}", "d"]} for i in range(7)]
    src, out = _write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    full = tmp_path / "full.jsonl"
    score_file(scorer, src, full, chunk_rows=2, progress=False)

    import megatron_polar.scoring.batch_scoring as bs

    real, calls = bs._score_chunk, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of the third chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(bs, "_score_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        score_file(scorer, src, out, chunk_rows=2, progress=False)
    assert not out.exists()
    monkeypatch.setattr(bs, "_score_chunk", real)
    stats = score_file(scorer, src, out, chunk_rows=2, progress=False, resume=True)
    assert stats.resumed_from_line == 4 and stats.rows == 7
    assert out.read_text() == full.read_text()


def test_evaluate_protocol_and_cli(scorer, checkpoint_path, tokenizer_path, tmp_path, capsys):
    rows = [
        {"prompt": f"q{i}", "responses": ["best answer", f"good {i}", "bad", "worst"], "category": c}
        for i, c in enumerate(["math", "code", "math", "chat"])
    ]
    report = evaluate_preferences(scorer, rows)
    # by hand: reference = best, correct when 2nd > 3rd
    manual = sum(
        a > b for a, b in (scorer.score(r["prompt"], r["responses"][0], r["responses"][1:3]) for r in rows)
    )
    assert report["overall"]["n"] == 4 and report["overall"]["correct"] == manual
    assert report["categories"]["math"]["n"] == 2
    assert "overall" in format_table(report)

    src, out = _write(tmp_path / "ranked.jsonl", rows), tmp_path / "report.json"
    rc = evaluate_cli.main(
        [*_common(checkpoint_path, tokenizer_path), "--input", str(src), "--output", str(out)]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "category" in printed and "math" in printed and "overall" in printed
    saved = json.loads(out.read_text())
    assert saved["overall"] == report["overall"] and saved["categories"] == report["categories"]

    _write(src, [rows[0], {"prompt": "p", "responses": ["a", "b"]}])
    assert evaluate_cli.main([*_common(checkpoint_path, tokenizer_path), "--input", str(src)]) == 2
    assert "ranked.jsonl:2: 'responses' needs at least 3" in capsys.readouterr().err
