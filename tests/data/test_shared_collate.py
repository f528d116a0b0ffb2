"""Shared-prefix rows: layout, reward positions, accounting and the footprint the planner packs by."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_polar.data.batch import SharedPrefixParams
from megatron_polar.data.batching import collate_shared, shared_footprint
from megatron_polar.data.pair_dataset import shared_prefix_length


def _pairs(seed: int, n: int) -> list[tuple[list[int], list[int]]]:
    """Pairs with a random common prefix (sometimes empty, sometimes all but one token)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = int(rng.integers(0, 6))
        prefix = rng.integers(5, 50, size=p).tolist()
        a = rng.integers(5, 50, size=int(rng.integers(1, 5))).tolist()
        b = rng.integers(5, 50, size=int(rng.integers(1, 5))).tolist()
        b[0] = a[0] + 1  # differ right after the prefix
        out.append((prefix + a + [99], prefix + b + [99]))
    return out


def test_each_sequence_is_its_keys_at_its_positions():
    pairs = _pairs(0, 7)
    rows = [pairs[:3], pairs[3:5], [], pairs[5:]]
    s = 40
    batch = collate_shared(rows, s)
    psp = batch.packed_seq_params
    assert isinstance(psp, SharedPrefixParams) and psp.qkv_format == "thd"
    assert batch.tokens.shape == (1, len(rows) * s) and batch.attention_mask is None
    flat, pos = batch.tokens[0], batch.position_ids[0]
    seg = torch.tensor(psp.segments)
    # query segments tile the stream in order, and the device tensors repeat the host bounds
    assert seg[0, 0] == 0 and torch.equal(seg[1:, 0], seg[:-1, 1]) and seg[-1, 1] == flat.numel()
    assert psp.cu_seqlens_q.tolist() == [0, *seg[:, 1].tolist()]
    assert psp.cu_seqlens_kv.tolist() == [0, *seg[:, 3].tolist()]
    assert psp.max_seqlen_kv == int((seg[:, 3] - seg[:, 2]).max())
    # every sequence is exactly the key stream of the query segment that ends at its reward token
    ends = {int(q1) - 1: (int(k0), int(k1)) for _, q1, k0, k1 in psp.segments}
    for (chosen, rejected), idx in zip(pairs, batch.reward_index.tolist(), strict=True):
        for seq, i in zip((chosen, rejected), idx, strict=True):
            k0, k1 = ends[i]
            keys = psp.kv_index[k0:k1]
            assert flat[keys].tolist() == seq
            assert pos[keys].tolist() == list(range(len(seq)))
            assert pos[i] == len(seq) - 1 and flat[i] == 99
    # the prefix is stored once per pair
    assert batch.num_real_tokens == sum(len(c) + len(r) - shared_prefix_length(c, r) for c, r in pairs)
    assert batch.sum_sq_lengths == sum(
        len(c) ** 2 + len(r) ** 2 - shared_prefix_length(c, r) ** 2 for c, r in pairs
    )


def test_padding_tails_and_empty_rows_attend_to_themselves():
    pairs = _pairs(1, 2)
    s = 30
    batch = collate_shared([[pairs[0]], [], [pairs[1]]], s)
    psp = batch.packed_seq_params
    used = [shared_footprint(len(c), len(r), shared_prefix_length(c, r)) for c, r in pairs]
    tails = [(q0, q1, k0, k1) for q0, q1, k0, k1 in psp.segments if q1 % s == 0]
    assert [(q0, q1) for q0, q1, _, _ in tails] == [(used[0], s), (s, 2 * s), (2 * s + used[1], 3 * s)]
    for q0, q1, k0, k1 in tails:
        assert psp.kv_index[k0:k1].tolist() == list(range(q0, q1))
        assert batch.position_ids[0, q0:q1].tolist() == list(range(q1 - q0))
        assert batch.tokens[0, q0:q1].eq(0).all()


def test_no_prefix_when_the_sequences_differ_at_once():
    batch = collate_shared([[([1, 2, 9], [3, 9])]], 8)
    assert batch.packed_seq_params.segments == ((0, 3, 0, 3), (3, 5, 3, 5), (5, 8, 5, 8))
    assert batch.reward_index.tolist() == [[2, 4]]


def test_footprint_is_vectorised_and_checks_the_prefix():
    c, r, p = np.array([5, 7, 3]), np.array([6, 7, 9]), np.array([2, 6, 0])
    assert shared_footprint(c, r, p).tolist() == [9, 8, 12]
    assert shared_footprint(5, 6, 2) == 9 and isinstance(shared_footprint(5, 6, 2), int)
    with pytest.raises(ValueError, match="at least one token"):
        shared_footprint(np.array([4, 5]), np.array([4, 9]), np.array([3, 5]))


def test_overflow_names_the_config_key():
    pair = ([1, 2, 3, 4, 9], [1, 2, 3, 5, 9])  # prefix 3: footprint 7
    assert collate_shared([[pair]], 7).num_real_tokens == 7
    with pytest.raises(
        ValueError, match=r"row 1 overflows data\.seq_length=10: pair 1 needs 7 tokens from column 7"
    ):
        collate_shared([[pair], [pair, pair]], 10)


def test_to_keeps_the_subclass_and_moves_its_tensors():
    batch = collate_shared([_pairs(2, 2)], 20)
    moved = batch.to(torch.device("meta"))
    psp = moved.packed_seq_params
    assert type(psp) is SharedPrefixParams
    assert psp.kv_index.is_meta and psp.positions.is_meta and psp.cu_seqlens_kv.is_meta
    assert psp.segments == batch.packed_seq_params.segments
    assert psp.max_seqlen_q == batch.packed_seq_params.max_seqlen_q
