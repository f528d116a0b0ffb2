"""Shared-prefix rows: grouping, row layout and rewards equal to scoring each sequence on its own."""

from __future__ import annotations

import random

import pytest

from megatron_polar.model.builder import takes_attention_masks
from megatron_polar.scoring.prefix_sharing import (
    attention_weight,
    collate_shared_rows,
    common_prefix_length,
    plan_shared_rows,
)
from megatron_polar.scoring.requests import ScoreRequest
from megatron_polar.scoring.scorer import PolarScorer
from tests.support.scoring import random_text

TOL = 1e-5  # different matrix shapes round differently in the last bits


def _naive_lcp(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_common_prefix_length_matches_a_token_by_token_scan():
    rng = random.Random(0)
    for _ in range(500):
        base = [rng.randrange(4) for _ in range(rng.randrange(0, 40))]
        a = base + [rng.randrange(4) for _ in range(rng.randrange(0, 10))]
        b = base + [rng.randrange(4) for _ in range(rng.randrange(0, 10))]
        assert common_prefix_length(a, b) == _naive_lcp(a, b)


def test_plan_groups_shared_prefixes_and_covers_every_sequence():
    p1, p2 = list(range(100, 130)), list(range(200, 240))
    seqs = [
        p1 + [1, 2],
        p2 + [5],
        p1 + [3],
        list(range(300, 340)),  # shares nothing
        p2 + [6, 7, 8],
        p1 + [1, 2],  # identical to sequence 0: still keeps its last token as a suffix
        p1[:10] + [9] * 30,  # shares 10 < min_prefix tokens with p1's group
    ]
    rows, alone = plan_shared_rows(seqs, min_prefix=16)
    covered = sorted([i for r in rows for i in r.members] + alone)
    assert covered == list(range(len(seqs)))
    groups = {frozenset(r.members): r for r in rows}
    assert set(groups) == {frozenset({0, 2, 5}), frozenset({1, 4})}
    assert groups[frozenset({0, 2, 5})].prefix == 30
    assert groups[frozenset({1, 4})].prefix == 40
    for r in rows:
        assert all(len(seqs[i]) > r.prefix for i in r.members)
        assert r.width == r.prefix + sum(len(seqs[i]) - r.prefix for i in r.members)
    assert alone == [3, 6]
    assert plan_shared_rows(seqs, min_prefix=16) == (rows, alone)  # depends only on the inputs
    mixed = [tuple(s) if i % 2 else s for i, s in enumerate(seqs)]  # lists and tuples compare by value
    assert plan_shared_rows(mixed, min_prefix=16) == (rows, alone)


def test_plan_respects_the_row_budget():
    prefix = list(range(1000, 1050))
    seqs = [prefix + [i] * 10 for i in range(12)]
    rows, alone = plan_shared_rows(seqs, min_prefix=16, max_row_tokens=100)
    assert all(r.width <= 100 for r in rows)
    assert sorted([i for r in rows for i in r.members] + alone) == list(range(12))
    assert len(rows) > 1  # the group was split, each row with its own copy of the prefix


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        # tiny: h 64, 4 heads of 16, 2 KV groups, SwiGLU ffn 176 -> 4*64 / (2*64*(64+64) + 2*64*64 + 2*64*3*176)
        ("tiny", 256 / 92160),
        # POLAR-7B: h 4096, 32 heads of 128, 8 KV groups, SwiGLU ffn 14336
        ("polar_7b", 4 * 4096 / (2 * 4096 * (4096 + 2048) + 2 * 4096 * 4096 + 2 * 4096 * 3 * 14336)),
    ],
)
def test_attention_weight_counts_flops(preset, expected):
    from megatron_polar.config import load_config
    from megatron_polar.config.to_mcore import transformer_config

    cfg = load_config([f"model={preset}"])
    assert attention_weight(transformer_config(cfg, use_te=False, on_gpu=False)) == pytest.approx(expected)


def test_plan_prices_causal_pairs_of_varlen_rows():
    """Shared rows run as variable-length attention: a long row with a short common prefix pays only its
    segments' causal pairs, so it is never dearer than its sequences apart (a masked row paid all pairs)."""
    prefix = list(range(1000, 1100))  # 100 shared tokens before 1,900 of their own
    seqs = [prefix + [i] * 1900 for i in range(2)]
    for weight in (0.0, 1 / 360, 1.0):
        rows, alone = plan_shared_rows(seqs, min_prefix=16, max_row_tokens=8192, attention_weight=weight)
        assert len(rows) == 1 and alone == [] and rows[0].width == 100 + 2 * 1900
    rows, alone = plan_shared_rows(seqs, min_prefix=101, max_row_tokens=8192, attention_weight=1 / 360)
    assert rows == [] and alone == [0, 1]  # below min_prefix: apart
    rows, alone = plan_shared_rows(seqs, min_prefix=16, max_row_tokens=3899, attention_weight=1 / 360)
    assert rows == [] and alone == [0, 1]  # over the row budget: apart


def test_collate_shared_rows_layout():
    seqs = [[7, 8, 9, 1], [7, 8, 9, 2, 3], [5, 6]]
    rows, alone = plan_shared_rows(seqs, min_prefix=2)
    assert alone == [2] and len(rows) == 1 and rows[0].prefix == 3
    batch, owners = collate_shared_rows(seqs, rows, pad_multiple=8)
    assert batch.tokens[0].tolist() == [7, 8, 9, 1, 2, 3, 0, 0]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 3, 4, 0, 1]
    assert owners == [0, 1] and batch.reward_index.view(-1).tolist() == [3, 5]
    assert batch.attention_mask is None  # no s x s mask: segments with their own keys
    psp = batch.packed_seq_params
    keys = {q0: psp.kv_index[k0:k1].tolist() for q0, _, k0, k1 in psp.segments}
    assert keys == {0: [0, 1, 2], 3: [0, 1, 2, 3], 4: [0, 1, 2, 4, 5], 6: [6, 7]}  # never the other suffix


def _requests(rng, n, candidates, references=1):
    return [
        ScoreRequest(
            prompt=random_text(rng, 3, 20),
            references=[random_text(rng, 3, 20) for _ in range(references)],
            candidates=[random_text(rng, 1, 30) for _ in range(candidates)],
        )
        for _ in range(n)
    ]


def test_shared_rows_score_like_separate_sequences(scorer):
    assert takes_attention_masks(scorer.model) and scorer.share_prefix  # the local spec's varlen path
    plain = PolarScorer(scorer.model, scorer.tokenizer, share_prefix=False, batch_tokens=4096)
    rng = random.Random(3)
    requests = _requests(rng, 5, candidates=6) + _requests(rng, 3, candidates=2, references=3)
    requests.append(ScoreRequest("same", ["same reference"], ["twice", "twice", "once"]))
    sequences = [s for r in requests for s in scorer.encode(r).sequences]
    rows, _ = plan_shared_rows(sequences, scorer.min_shared_prefix, scorer.shared_row_tokens)
    assert sum(len(r.members) for r in rows) > len(sequences) // 2  # the test exercises shared rows
    shared = scorer.forward_sequences(sequences)
    alone = plain.forward_sequences(sequences)
    assert shared == pytest.approx(alone, abs=TOL)
    assert len(set(alone)) > len(sequences) // 2, "a random non-zero head must tell sequences apart"
    one_by_one = [plain.forward_sequences([s])[0] for s in sequences[:12]]
    assert shared[:12] == pytest.approx(one_by_one, abs=TOL)


def test_transformer_impl_overrides_the_checkpoint(checkpoint_path, tokenizer_path, scorer):
    from megatron_polar.config import ConfigError, load_config
    from megatron_polar.model.standalone import with_transformer_impl

    local = PolarScorer.from_checkpoint(
        checkpoint_path, tokenizer_path, device="cpu", transformer_impl="local", batch_tokens=4096
    )
    assert local.share_prefix
    assert local.score("a prompt", "the reference", ["one", "two"]) == scorer.score(
        "a prompt", "the reference", ["one", "two"]
    )
    with pytest.raises(ConfigError, match="transformer_impl=transformer_engine"):
        PolarScorer.from_checkpoint(
            checkpoint_path, tokenizer_path, device="cpu", transformer_impl="transformer_engine"
        )
    with pytest.raises(ValueError, match="got 'te'"):
        PolarScorer.from_checkpoint(checkpoint_path, tokenizer_path, device="cpu", transformer_impl="te")
    cfg = load_config(["model.fp8=hybrid"])
    assert with_transformer_impl(cfg, "local").model.fp8 is None  # no FP8 kernels in the local spec
    assert with_transformer_impl(cfg, "auto").model.fp8 == "hybrid"
    assert with_transformer_impl(cfg, None) is cfg
