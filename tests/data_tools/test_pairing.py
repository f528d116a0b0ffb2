"""``pair`` and ``rank``: the paper's triple recipes, reproducibility, holdout routing, bad input."""

from __future__ import annotations

import json
import random

import pytest

from data_tools.pairing import PairConfig, draw_pairs, ranked_triples, run_pair, run_rank
from data_tools.records import RecordError
from tests.support.text_data import write_jsonl


def rollouts(n_prompts: int = 20, policies=("p1", "p2", "p3", "p4"), per_policy: int = 2) -> list[dict]:
    rows = []
    for i in range(n_prompts):
        for p in policies:
            for k in range(per_policy):
                rows.append({"prompt": f"prompt {i}", "policy": p, "response": f"{p} answer {k} to {i}"})
    return rows


def read(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def check_triple(row: dict) -> None:
    ref, chosen, rejected = (row[k][0]["content"] for k in ("reference", "chosen", "rejected"))
    assert ref.startswith(row["policy_a"]) and chosen.startswith(row["policy_a"]) and ref != chosen
    assert rejected.startswith(row["policy_b"]) and row["policy_a"] != row["policy_b"]
    assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]


def test_pair_recipe_and_format(tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", rollouts())
    stats = run_pair([src], str(tmp_path / "out.jsonl"), PairConfig(pairs_per_prompt=2))
    rows = read(tmp_path / "out.jsonl")
    assert stats.pairs_written == len(rows) == 40 and stats.prompts == 20
    for row in rows:
        check_triple(row)
        assert row["reference"][0]["role"] == "assistant"
    by_prompt: dict = {}
    for row in rows:  # default: a policy takes part in at most one pair of a prompt
        by_prompt.setdefault(row["prompt"][0]["content"], []).extend([row["policy_a"], row["policy_b"]])
    assert all(len(set(v)) == len(v) for v in by_prompt.values())


def test_pair_independent_of_input_order_and_files(tmp_path):
    rows = rollouts()
    a = write_jsonl(tmp_path / "a.jsonl", rows)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    b1 = write_jsonl(tmp_path / "b1.jsonl", shuffled[:50])
    b2 = write_jsonl(tmp_path / "b2.jsonl", shuffled[50:])
    run_pair([a], str(tmp_path / "o1.jsonl"), PairConfig(pairs_per_prompt=2, partitions=3))
    run_pair([b2, b1], str(tmp_path / "o2.jsonl"), PairConfig(pairs_per_prompt=2, partitions=3))
    assert (tmp_path / "o1.jsonl").read_bytes() == (tmp_path / "o2.jsonl").read_bytes()
    run_pair([a], str(tmp_path / "o3.jsonl"), PairConfig(pairs_per_prompt=2, partitions=3, seed=99))
    assert (tmp_path / "o3.jsonl").read_bytes() != (tmp_path / "o1.jsonl").read_bytes()


def test_policy_repeat_allows_more_pairs(tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", rollouts(3, policies=("p1", "p2"), per_policy=3))
    run_pair([src], str(tmp_path / "no.jsonl"), PairConfig(pairs_per_prompt=4))
    run_pair([src], str(tmp_path / "yes.jsonl"), PairConfig(pairs_per_prompt=4, allow_policy_repeat=True))
    assert len(read(tmp_path / "no.jsonl")) == 3  # two policies: one pair per prompt
    yes = read(tmp_path / "yes.jsonl")
    assert len(yes) == 12
    for row in yes:
        check_triple(row)
    keys = [json.dumps([r["reference"], r["chosen"], r["rejected"]]) for r in yes]
    assert len(set(keys)) == len(keys)


def test_holdout_policies_never_in_main_output(tmp_path):
    src = write_jsonl(tmp_path / "r.jsonl", rollouts())
    cfg = PairConfig(pairs_per_prompt=2, holdout_policies=frozenset({"p3"}))
    stats = run_pair([src], str(tmp_path / "main.jsonl"), cfg, holdout_output=str(tmp_path / "hold.jsonl"))
    main, hold = read(tmp_path / "main.jsonl"), read(tmp_path / "hold.jsonl")
    assert main and hold and stats.holdout_pairs_written == len(hold)
    assert all("p3" not in (r["policy_a"], r["policy_b"]) for r in main)
    assert all("p3" in (r["policy_a"], r["policy_b"]) for r in hold)
    with pytest.raises(ValueError, match="holdout-output"):
        run_pair([src], str(tmp_path / "x.jsonl"), cfg)


def test_skipped_prompts_and_bad_rows_counted(tmp_path):
    rows = rollouts(2) + [
        {"prompt": "lonely", "policy": "p1", "response": "a"},
        {"prompt": "lonely", "policy": "p1", "response": "b"},
        {"prompt": "singletons", "policy": "p1", "response": "a"},
        {"prompt": "singletons", "policy": "p2", "response": "b"},
        {"prompt": "x", "policy": 3, "response": "a"},
        {"prompt": "x", "response": "a"},
        {"prompt": "", "policy": "p1", "response": "a"},
        b"\xff\xfe not utf8",
        "{broken",
    ]
    src = write_jsonl(tmp_path / "r.jsonl", rows)
    stats = run_pair([src], str(tmp_path / "o.jsonl"), PairConfig())
    assert stats.rows_read == len(rows)
    assert stats.skipped_prompts.counts == {"single_policy": 1, "no_policy_with_two_responses": 1}
    assert stats.bad_rows.counts == {
        "wrong_type": 1,
        "missing_field": 1,
        "empty_field": 1,
        "invalid_utf8": 1,
        "malformed_json": 1,
    }
    assert stats.bad_rows.examples["wrong_type"][0].startswith(f"{src}:")
    with pytest.raises(RecordError, match=r"r.jsonl:\d+: wrong_type"):
        run_pair([src], str(tmp_path / "strict.jsonl"), PairConfig(strict=True))
    assert not (tmp_path / "strict.jsonl").exists()


def test_loops_truncated_in_pairs(tmp_path):
    loop = "Answer: " + "again and again " * 100
    rows = [
        {"prompt": "q", "policy": "a", "response": loop},
        {"prompt": "q", "policy": "a", "response": "fine"},
        {"prompt": "q", "policy": "b", "response": "other"},
    ]
    src = write_jsonl(tmp_path / "r.jsonl", rows)
    stats = run_pair([src], str(tmp_path / "o.jsonl"), PairConfig())
    row = read(tmp_path / "o.jsonl")[0]
    texts = [row["reference"][0]["content"], row["chosen"][0]["content"]]
    assert stats.loops_truncated == 1 and "Answer: again and again again and again" in " ".join(texts)
    assert max(len(t) for t in texts) < 60


def test_draw_pairs_respects_accept():
    from data_tools.pairing import Response

    pool = {p: [Response(p, f'"{p}{i}"', "f:1") for i in range(2)] for p in ("a", "b", "c")}
    out = draw_pairs(pool, 5, random.Random(0), allow_repeat=True, accept=lambda a, b: b == "c")
    assert out and all(t[2].policy == "c" and t[0].policy != "c" for t in out)


def test_rank_modes(tmp_path):
    rows = [
        {"prompt": "q1", "responses": ["best", "good", "ok", "bad"], "category": "math"},
        {"prompt": [{"role": "user", "content": "q2"}], "responses": ["a", "b"]},
        {"prompt": "q3", "responses": "not a list"},
        {"prompt": "q4", "responses": ["a", "", "c"]},
    ]
    src = write_jsonl(tmp_path / "rank.jsonl", rows)
    stats = run_rank([src], str(tmp_path / "first3.jsonl"))
    out = read(tmp_path / "first3.jsonl")
    assert stats.rows_read == 4
    assert stats.triples_written == 1 and stats.bad_rows.counts == {
        "fewer_than_3_responses": 1,
        "wrong_type": 1,
        "empty_field": 1,
    }
    assert [out[0][k][0]["content"] for k in ("reference", "chosen", "rejected")] == ["best", "good", "ok"]
    assert out[0]["category"] == "math"
    run_rank([src], str(tmp_path / "all.jsonl"), mode="all")
    triples = [
        tuple(r[k][0]["content"] for k in ("reference", "chosen", "rejected"))
        for r in read(tmp_path / "all.jsonl")
    ]
    assert triples == [("best", "good", "ok"), ("best", "good", "bad"), ("best", "ok", "bad")]
    assert ranked_triples([1, 2], "all") == []
    with pytest.raises(RecordError, match=r"rank.jsonl:2: fewer_than_3"):
        run_rank([src], str(tmp_path / "strict.jsonl"), strict=True)
    with pytest.raises(FileExistsError):
        run_rank([src], str(tmp_path / "all.jsonl"))
