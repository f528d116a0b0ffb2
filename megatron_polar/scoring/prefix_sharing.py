"""Shared-prefix rows: score sequences that start with the same tokens without recomputing that start.

A POLAR sequence is ``[bos] P R [split] P C [reward]``, so the candidates of one request (a GRPO group,
OpenRLHF's rollouts of one prompt) differ only in ``C``: everything before it is shared. The ids are the
whole POLAR string's (``megatron_polar.data.format``), where the ``"\n"`` before ``C`` may merge with
``C``'s first characters, so the shared part is taken as the longest common prefix of the ids. A shared row
holds that prefix once, followed by each member's own suffix::

    [ prefix (p tokens) | suffix 1 | suffix 2 | ... ]      positions 0..p-1 | p..len1-1 | p..len2-1 | ...

Attention is causal within the prefix; every suffix sees the whole prefix and itself (causally), never
another suffix; position ids continue from the prefix inside every suffix. Each member's last hidden
state is therefore exactly the one it would get alone (up to the rounding of different matrix shapes),
while the prefix's layers run once instead of once per member.

The mask is explicit (``[rows, 1, s, s]``, True = masked), so shared rows need core attention that takes
arbitrary masks: the local spec's SDPA attention, not Transformer Engine's THD path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from megatron_polar.data.batch import RewardBatch
from megatron_polar.scoring.collate import padded_length


@dataclass(frozen=True)
class SharedRow:
    """One row: ``members`` (sequence indices, in row order) share their first ``prefix`` tokens."""

    members: tuple[int, ...]
    prefix: int
    width: int  # prefix + the members' suffixes


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists (slice comparisons run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1  # a[:lo] == b[:lo] and a[:hi + 1] != b[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def attention_weight(config: Any) -> float:
    """FLOPs of one attended (query, key) pair over FLOPs of one token through a layer's linear maps.

    ``config`` is megatron-core's ``TransformerConfig``. 1/360 for the tiny preset, 1/26,624 for POLAR-7B:
    the longer the rows and the smaller the model, the more attention weighs in the choice to share.
    """
    h, d = config.hidden_size, config.kv_channels
    q = config.num_attention_heads * d
    kv = 2 * (config.num_query_groups or config.num_attention_heads) * d
    mlp = (3 if config.gated_linear_unit else 2) * config.ffn_hidden_size
    linear = 2 * h * (q + kv) + 2 * q * h + 2 * h * mlp
    return 4 * q / linear  # q.k and the weighted sum of v


def _row_cost(width: int, weight: float) -> float:
    # An explicit mask lets no kernel skip the masked half: every (query, key) pair of the row is paid.
    return width + weight * width * width


def _alone_cost(n: int, weight: float) -> float:
    # Causal attention of a sequence on its own computes about half of its pairs.
    return n + weight * n * n / 2


def plan_shared_rows(
    sequences: Sequence[Sequence[int]],
    min_prefix: int = 16,
    max_row_tokens: int = 8192,
    attention_weight: float = 0.0,
) -> tuple[list[SharedRow], list[int]]:
    """Group sequences with a common prefix of at least ``min_prefix`` tokens into shared rows.

    Sequences are sorted, so those sharing a prefix are neighbours; a run of neighbours becomes one row
    while adding the next one is cheaper than scoring it alone and the row stays within
    ``max_row_tokens``. Cost counts tokens through the linear layers plus ``attention_weight`` (see
    :func:`attention_weight`) per attended pair: sharing saves the prefix's tokens but pays for all
    pairs of a longer, masked row, which for long rows with short prefixes is the larger sum. Every
    member keeps at least its last token as its own suffix. Returns the rows (two or more members each)
    and the indices of sequences left alone. The plan depends only on the sequences, so the same inputs
    always meet the same rows.
    """
    if min_prefix < 1:
        raise ValueError(f"min_prefix must be >= 1, got {min_prefix}")
    w = attention_weight
    sequences = [s if isinstance(s, list) else list(s) for s in sequences]  # tuples, arrays: compare as lists
    order = sorted(range(len(sequences)), key=lambda i: sequences[i])
    runs: list[tuple[list[int], int, int, float]] = []  # (members, prefix, member tokens, cost)
    for i in order:
        n = len(sequences[i])
        if runs:
            members, p, total, cost = runs[-1]
            shared = min(p, common_prefix_length(sequences[members[-1]], sequences[i]), n - 1)
            width = total + n - len(members) * shared
            joined = _row_cost(width, w)
            if shared >= min_prefix and width <= max_row_tokens and joined <= cost + _alone_cost(n, w):
                runs[-1] = (members + [i], shared, total + n, joined)
                continue
        runs.append(([i], n - 1, n, _alone_cost(n, w)))
    rows, alone = [], []
    for members, p, total, _ in runs:
        if len(members) == 1:
            alone.append(members[0])
        else:
            rows.append(SharedRow(tuple(members), p, total - (len(members) - 1) * p))
    return rows, sorted(alone)


def collate_shared_rows(
    sequences: Sequence[Sequence[int]],
    rows: Sequence[SharedRow],
    pad_multiple: int = 1,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[RewardBatch, list[int]]:
    """The batch of ``rows`` (right-padded to the widest) and the sequence index of each reward.

    ``reward_index`` is ``[n, 1]``, one entry per member at its last token, in the order of the returned
    indices. The ``[rows, 1, s, s]`` mask is built on ``device`` from per-token segment ids, so only
    ``[rows, s]`` tensors cross to an accelerator.
    """
    if not rows:
        raise ValueError("collate_shared_rows needs at least one row")
    width = padded_length(max(r.width for r in rows), pad_multiple)
    tokens = np.full((len(rows), width), pad_id, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    segment = np.full((len(rows), width), -1, dtype=np.int64)  # 0 prefix, k suffix k, -1 padding
    ends, owners = [], []
    for r, row in enumerate(rows):
        p = row.prefix
        tokens[r, :p] = sequences[row.members[0]][:p]
        positions[r, :p] = np.arange(p)
        segment[r, :p] = 0
        at = p
        for k, i in enumerate(row.members, start=1):
            suffix = sequences[i][p:]
            n = len(suffix)
            tokens[r, at : at + n] = suffix
            positions[r, at : at + n] = np.arange(p, p + n)
            segment[r, at : at + n] = k
            at += n
            ends.append(r * width + at - 1)
            owners.append(i)
    seg = torch.from_numpy(segment).to(device)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    seg_q, seg_k = seg[:, :, None], seg[:, None, :]
    visible = causal & ((seg_k == 0) | (seg_k == seg_q))  # padding (-1) sees itself: no empty rows
    return (
        RewardBatch(
            tokens=torch.from_numpy(tokens),
            position_ids=torch.from_numpy(positions),
            reward_index=torch.tensor(ends, dtype=torch.int64).view(-1, 1),
            attention_mask=(~visible).unsqueeze(1),
            num_real_tokens=sum(r.width for r in rows),
        ),
        owners,
    )
