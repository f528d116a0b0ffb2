"""Attended lengths with and without a shared prefix: hand arithmetic and a tiny built dataset."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from data_tools.build import BuildConfig, build_dataset
from megatron_polar.data.pair_dataset import open_pair_dataset, shared_prefix_length
from megatron_polar.plan import dataset_lengths
from megatron_polar.planning.lengths import length_stats, paper_length_mix
from tests.support.text_data import make_triples, strip_prefix_sidecar, write_jsonl


def test_one_pair_by_hand():
    # chosen 5 tokens, rejected 4, sharing 2: unshared 9 tokens, (25 + 16) / 2 causal pairs;
    # shared: 2 + 3 + 2 tokens, 2^2/2 + (3 + 2) * 2 + (9 + 4) / 2 = 2 + 10 + 6.5 pairs.
    s = length_stats(np.array([5]), np.array([4]), np.array([2]))
    assert (s.tokens, s.attention_pairs) == (9, 20.5)
    assert (s.shared_tokens, s.shared_attention_pairs) == (7, 18.5)
    assert s.attn_length == pytest.approx((25 + 16) / 9)  # token-weighted E[L^2]/E[L]
    assert s.shared_attn_length == pytest.approx(2 * 18.5 / 7)


def test_shared_prefix_length_leaves_each_sequence_its_reward_token():
    assert shared_prefix_length([1, 2, 3, 9], [1, 2, 3, 7, 8]) == 3
    assert shared_prefix_length([1, 2, 3], [1, 2, 3]) == 2
    assert shared_prefix_length([4, 2], [1, 2]) == 0
    with pytest.raises(ValueError, match="at least one token"):
        length_stats(np.array([3]), np.array([3]), np.array([3]))


def test_paper_mix_matches_the_issue_figures():
    s = length_stats(*paper_length_mix(20_000))
    assert s.attn_length == pytest.approx(5_700, rel=0.02)
    assert s.token_ratio == pytest.approx(0.70, abs=0.01)


def test_built_dataset_lengths_match_its_pairs(tmp_path, sp_tok):
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(40))
    cfg = BuildConfig(chunk_rows=16, max_length=256, max_response_length=100, progress=False)
    build_dataset([src], str(tmp_path / "ds"), sp_tok, cfg)
    got = dataset_lengths(str(tmp_path / "ds"), sample=1000)
    ds = open_pair_dataset(str(tmp_path / "ds"))
    tokens = sq = shared_tokens = shared_pairs = 0.0
    for i in range(len(ds)):  # independent count: walk the ids
        c, r = (list(map(int, x)) for x in ds.pair(i))
        tokens += len(c) + len(r)
        sq += len(c) ** 2 + len(r) ** 2
        p = 0
        while p < min(len(c), len(r)) - 1 and c[p] == r[p]:
            p += 1
        shared_tokens += len(c) + len(r) - p
        shared_pairs += sum(k + 1 for k in range(len(c))) + sum(k + 1 for k in range(p, len(r)))
    assert got.pairs == 40
    assert got.attn_length == pytest.approx(sq / tokens)
    assert got.shared_tokens == pytest.approx(shared_tokens)
    # Causal pairs including the diagonal are L(L+1)/2; the planner's L^2/2 drops the diagonal term.
    assert got.shared_attention_pairs == pytest.approx(shared_pairs - shared_tokens / 2, rel=1e-9)
    assert 0.3 < got.token_ratio < 1.0  # the pairs do share prompt and reference


def test_dataset_without_sidecar_is_estimated_from_sampled_pairs(tmp_path, sp_tok, caplog, monkeypatch):
    # A CLI test earlier in the session may have run setup_logging, which stops propagation to the root.
    monkeypatch.setattr(logging.getLogger("megatron_polar"), "propagate", True)
    src = write_jsonl(tmp_path / "t.jsonl", make_triples(40))
    cfg = BuildConfig(chunk_rows=16, max_length=256, max_response_length=100, progress=False)
    prefix = str(tmp_path / "ds")
    build_dataset([src], prefix, sp_tok, cfg)
    exact = dataset_lengths(prefix, sample=3)  # the sidecar: every pair, the sample size unused
    strip_prefix_sidecar(prefix)
    every = dataset_lengths(prefix, sample=1000)  # a sample of every pair is the whole set
    assert "add-prefix-lengths" in caplog.text
    assert every.tokens == exact.tokens and every.attention_pairs == exact.attention_pairs
    assert every.shared_tokens == pytest.approx(exact.shared_tokens)
    assert every.shared_attention_pairs == pytest.approx(exact.shared_attention_pairs)
    few = dataset_lengths(prefix, sample=3)
    assert few.tokens == exact.tokens  # unshared totals stay exact
    assert few.shared_tokens != pytest.approx(exact.shared_tokens, rel=1e-9)  # only 3 pairs' prefixes
