"""The one placement and its segment table against a dense reference written here, token by token.

A layout is described in plain Python (rows of groups ``(p, members)``, and whether a row's padding tail
continues the row or stands alone). From that description alone the reference says, for every pair of
tokens, whether the first attends to the second, and what each token's id and position are. The
collators' outputs are checked against it: the local mask of ``segments_to_mask``, the THD params
(``cu_seqlens`` of packed rows, ``SharedPrefixParams`` of shared rows) expanded to a dense mask here, the
position ids and the reward positions; and the THD expansion of packed rows equals their local mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_polar.data.batch import SharedPrefixParams
from megatron_polar.data.batching import (
    collate_packed,
    collate_padded,
    collate_prefix_groups,
    collate_shared,
    place_rows,
)
from megatron_polar.data.pair_dataset import shared_prefix_length
from megatron_polar.data.segments import causal_mask, segments_to_mask, segments_to_thd
from megatron_polar.scoring.collate import collate_sequences

PAD = 0


class Layout:
    """The reference: per-token labels of a plain description, and who may attend to whom."""

    def __init__(self, rows: list[list[tuple[int, list[list[int]]]]], s: int, tail_continues: bool):
        self.s, self.n_rows = s, len(rows)
        self.tokens, self.positions, self.labels, self.rewards = [], [], [], []
        for r, row in enumerate(rows):
            col = 0
            for g, (p, members) in enumerate(row):
                for i in range(p):
                    self._put(members[0][i], i, ("prefix", r, g))
                for m, seq in enumerate(members):
                    for i in range(p, len(seq)):
                        self._put(seq[i], i, ("member", r, g, m))
                    self.rewards.append(r * s + col + sum(len(x) - p for x in members[: m + 1]) + p - 1)
                col += p + sum(len(x) - p for x in members)
            last = self.positions[-1] if col else -1
            for i in range(s - col):
                # a padded row's tail continues the row (positions and causal attention); else it stands alone
                self._put(PAD, last + 1 + i if tail_continues else i, ("tail", r, tail_continues))
        assert len(self.tokens) == self.n_rows * s

    def _put(self, token: int, position: int, label: tuple) -> None:
        self.tokens.append(int(token))
        self.positions.append(position)
        self.labels.append(label)

    def sees(self, a: int, b: int) -> bool:
        """Does the token at flat index ``a`` attend to the one at ``b``?"""
        la, lb = self.labels[a], self.labels[b]
        if a // self.s != b // self.s or b > a:
            return False
        if la[0] == "tail" and la[2]:  # padded row: the tail sees the whole row before it
            return True
        if la == lb:
            return True
        return la[0] == "member" and lb[0] == "prefix" and la[1:3] == lb[1:3]

    def dense(self) -> torch.Tensor:
        """``[t, t]`` True where attending is allowed, over the whole stream."""
        t = len(self.tokens)
        return torch.tensor([[self.sees(a, b) for b in range(t)] for a in range(t)])

    def row_masks(self) -> torch.Tensor:
        """``[rows, 1, s, s]`` True = masked, the local spec's convention."""
        s, d = self.s, self.dense()
        return torch.stack([~d[r * s : (r + 1) * s, r * s : (r + 1) * s] for r in range(self.n_rows)])[
            :, None
        ]


def dense_of_cu_seqlens(cu: torch.Tensor) -> torch.Tensor:
    """``[t, t]`` allowed: token ``a`` sees ``b`` iff both lie in one ``cu_seqlens`` segment and ``b <= a``."""
    bounds = cu.tolist()
    t = bounds[-1]
    seg = []
    for k in range(len(bounds) - 1):
        seg += [k] * (bounds[k + 1] - bounds[k])
    return torch.tensor([[seg[a] == seg[b] and b <= a for b in range(t)] for a in range(t)])


def dense_of_shared_params(psp: SharedPrefixParams, t: int) -> torch.Tensor:
    """``[t, t]`` allowed, from the THD description alone: query ``i`` of each segment sees key ``j`` of its
    gathered keys iff ``j <= i + lk - lq`` (bottom-right causal, as TE's padding_causal_bottom_right)."""
    out = torch.zeros(t, t, dtype=torch.bool)
    cu_q, cu_kv = psp.cu_seqlens_q.tolist(), psp.cu_seqlens_kv.tolist()
    for k in range(len(cu_q) - 1):
        q0, q1, k0, k1 = cu_q[k], cu_q[k + 1], cu_kv[k], cu_kv[k + 1]
        lq, lk = q1 - q0, k1 - k0
        for i in range(lq):
            for j in range(lk):
                if j <= i + lk - lq:
                    out[q0 + i, int(psp.kv_index[k0 + j])] = True
    return out


def random_seq(rng: np.random.Generator, lo: int, hi: int, prefix: list[int] = ()) -> list[int]:
    return [*prefix, *rng.integers(5, 60, size=int(rng.integers(lo, hi))).tolist(), 99]


def random_pairs(seed: int, n: int) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pre = rng.integers(5, 60, size=int(rng.integers(0, 5))).tolist()
        a, b = random_seq(rng, 1, 5, pre), random_seq(rng, 1, 5, pre)
        b[len(pre)] = a[len(pre)] + 1  # they part right after the common part
        out.append((a, b))
    return out


def pack(pairs, s: int) -> list[list[tuple[list[int], list[int]]]]:
    rows, cur, used = [], [], 0
    for c, j in pairs:
        if used + len(c) + len(j) > s:
            rows.append(cur)
            cur, used = [], 0
        cur.append((c, j))
        used += len(c) + len(j)
    return [*rows, cur, []]  # and an empty row: all tail


def check_tokens_positions_rewards(batch, ref: Layout, pairs_shape: bool) -> None:
    assert batch.tokens.flatten().tolist() == ref.tokens
    assert batch.position_ids.flatten().tolist() == ref.positions
    want = torch.tensor(ref.rewards).view(-1, 2 if pairs_shape else 1)
    assert torch.equal(batch.reward_index, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_padded_rows_match_the_reference(seed):
    pairs = random_pairs(seed, 3)
    s = max(len(x) for p in pairs for x in p) + 3
    ref = Layout([[(0, [seq])] for p in pairs for seq in p], s, tail_continues=True)
    batch = collate_padded(pairs, s, explicit_mask=True)
    check_tokens_positions_rewards(batch, ref, pairs_shape=True)
    assert torch.equal(batch.attention_mask, ref.row_masks())
    seqs = [seq for p in pairs for seq in p]
    scored = collate_sequences(seqs, s, explicit_mask=True)
    check_tokens_positions_rewards(scored, ref, pairs_shape=False)
    assert torch.equal(scored.attention_mask, ref.row_masks())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_rows_local_mask_and_thd_match_the_reference(seed):
    s = 24
    rows = pack(random_pairs(seed, 6), s)
    ref = Layout([[(0, [seq]) for pair in row for seq in pair] for row in rows], s, tail_continues=False)
    local = collate_packed(rows, s)
    check_tokens_positions_rewards(local, ref, pairs_shape=True)
    assert torch.equal(local.attention_mask, ref.row_masks())
    thd = collate_packed(rows, s, thd=True)
    check_tokens_positions_rewards(thd, ref, pairs_shape=True)
    psp = thd.packed_seq_params
    assert type(psp) is PackedSeqParams and psp.cu_seqlens_kv is psp.cu_seqlens_q
    thd_dense = dense_of_cu_seqlens(psp.cu_seqlens_q)
    assert torch.equal(thd_dense, ref.dense())
    # the THD segments, expanded, are the local mask row by row (and nothing crosses rows)
    blocks = torch.stack([~thd_dense[r * s : (r + 1) * s, r * s : (r + 1) * s] for r in range(len(rows))])
    assert torch.equal(blocks[:, None], local.attention_mask)
    assert thd_dense.sum() == (~local.attention_mask).sum()
    assert psp.max_seqlen_q == max(
        b - a for a, b in zip(psp.cu_seqlens_q.tolist(), psp.cu_seqlens_q.tolist()[1:])
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_rows_thd_and_local_mask_match_the_reference(seed):
    s = 30
    rows = pack(random_pairs(seed, 6), s)
    groups = [[(shared_prefix_length(np.array(c), np.array(j)), [c, j]) for c, j in row] for row in rows]
    ref = Layout(groups, s, tail_continues=False)
    batch = collate_shared(rows, s)
    check_tokens_positions_rewards(batch, ref, pairs_shape=True)
    psp = batch.packed_seq_params
    assert isinstance(psp, SharedPrefixParams)
    assert torch.equal(dense_of_shared_params(psp, len(ref.tokens)), ref.dense())
    # the same segment table as a local mask: the helper expresses shared keys too
    placed = place_rows(groups, s)
    assert torch.equal(segments_to_mask(placed.segments, placed.kv_index, len(rows), s), ref.row_masks())


def test_prefix_groups_of_many_members_match_the_reference():
    rng = np.random.default_rng(5)
    pre = rng.integers(5, 60, size=6).tolist()
    members = [random_seq(rng, 1, 6, pre) for _ in range(4)]
    for i, m in enumerate(members):
        m[6] = 70 + i  # distinct right after the prefix
    rows = [[(6, members[:3])], [(6, members[3:]), (0, [[7, 8, 99]])]]
    s = 6 + sum(len(m) - 6 for m in members[:3]) + 2
    ref = Layout(rows, s, tail_continues=False)
    batch = collate_prefix_groups(rows, s)
    check_tokens_positions_rewards(batch, ref, pairs_shape=False)
    assert torch.equal(dense_of_shared_params(batch.packed_seq_params, len(ref.tokens)), ref.dense())


def test_padded_rows_share_one_causal_mask_and_one_arange():
    pairs = random_pairs(3, 4)
    s = 40
    for batch in (
        collate_padded(pairs, s),
        collate_sequences([x for p in pairs for x in p], s, explicit_mask=True),
    ):
        mask = batch.attention_mask
        assert mask.stride(0) == 0  # a broadcast view: no per-row s x s memory
        assert mask.untyped_storage().data_ptr() == causal_mask(s).untyped_storage().data_ptr()
    assert collate_sequences([[1, 2], [3]], 8).position_ids.stride(0) == 0


def _toy_attention(batch, mask: torch.Tensor) -> torch.Tensor:
    """One attention layer of fixed random embeddings: ``[t, d]`` outputs; ``mask`` True = masked."""
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(128, 8, generator=gen)
    x = table[batch.tokens.flatten()] + 0.1 * batch.position_ids.flatten()[:, None]
    return F.scaled_dot_product_attention(x[None], x[None], x[None], attn_mask=~mask)[0]


def _flat(mask_rows: torch.Tensor) -> torch.Tensor:
    """Block-diagonal ``[t, t]`` (True = masked) of a ``[rows, 1, s, s]`` mask."""
    return ~torch.block_diag(*(~m[0] for m in mask_rows))


def test_packed_sequences_do_not_see_each_other():
    """Changing one sequence of a packed row changes its own outputs and no other sequence's: this fails if
    packed rows attended across sequences (a plain causal mask does, checked last)."""
    s = 20
    first = ([11, 12, 13, 99], [11, 14, 99])
    second = ([21, 22, 99], [23, 24, 25, 99])
    other = ([31, 32, 33, 34, 99], [35, 99])
    base_rows = [[first, second], [other]]
    edit_rows = [[([51, 52, 53, 99], [54, 55, 99]), second], [other]]  # same lengths, new tokens
    for thd in (False, True):
        a, b = collate_packed(base_rows, s, thd=thd), collate_packed(edit_rows, s, thd=thd)
        if thd:
            mask = ~dense_of_cu_seqlens(a.packed_seq_params.cu_seqlens_q)
            assert torch.equal(mask, ~dense_of_cu_seqlens(b.packed_seq_params.cu_seqlens_q))
        else:
            mask = _flat(a.attention_mask)
        out_a, out_b = _toy_attention(a, mask), _toy_attention(b, mask)
        changed = torch.zeros(len(out_a), dtype=torch.bool)
        changed[:7] = True  # the first pair's tokens, columns 0..6 of row 0
        assert not torch.allclose(out_a[changed], out_b[changed])
        assert torch.equal(out_a[~changed], out_b[~changed])
    leaky = _flat(causal_mask(s)[None, None].expand(2, 1, s, s))  # causal over the whole row
    a, b = collate_packed(base_rows, s), collate_packed(edit_rows, s)
    assert not torch.allclose(_toy_attention(a, leaky)[7:20], _toy_attention(b, leaky)[7:20])


@pytest.mark.parametrize("q_len,kv_len", [(1, 1), (5, 5), (3, 7), (1, 9), (300, 310)])
def test_causal_mask_is_bottom_right_and_survives_growth(q_len, kv_len):
    small = causal_mask(2).clone()
    got = causal_mask(q_len, kv_len)
    want = torch.tensor([[j > i + kv_len - q_len for j in range(kv_len)] for i in range(q_len)])
    assert torch.equal(got, want)
    assert torch.equal(causal_mask(2), small)  # growing the cache keeps earlier answers
    with pytest.raises(ValueError, match="q_len <= kv_len"):
        causal_mask(4, 3)


def test_helpers_refuse_what_they_cannot_express():
    placed = place_rows([[(2, [[1, 2, 3], [1, 2, 4]])]], 6)
    with pytest.raises(ValueError, match="shared=True"):
        segments_to_thd(placed.segments, placed.kv_index)
    with pytest.raises(ValueError, match="positions"):
        segments_to_thd(placed.segments, placed.kv_index, shared=True)
    with pytest.raises(ValueError, match="leaves row 0"):  # keys in another row
        segments_to_mask(np.array([[0, 2, 0, 2]]), np.array([0, 7]), 2, 6)
    with pytest.raises(ValueError, match="packed row 0, sequence 1: an empty sequence"):
        collate_packed([[([1, 99], [])]], 8)
    with pytest.raises(ValueError, match=r"packed row 0 overflows data\.seq_length=4: sequence 1 needs 3"):
        collate_packed([[([1, 99], [2, 3, 99])]], 4)
