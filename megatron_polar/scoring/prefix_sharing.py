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

The row is the training layout of shared prefixes (``data.batching.collate_prefix_groups``): query
segments with their own key segments (``SharedPrefixParams``), run as variable-length attention by
either spec's core attention (``model/shared_prefix_attention.py``), with no ``s x s`` mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from megatron_polar.data.batch import RewardBatch
from megatron_polar.data.batching import collate_prefix_groups
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


def _row_cost(width: int, sum_sq: int, members: int, prefix: int, weight: float) -> float:
    # Varlen attention pays the causal pairs only: the prefix's p**2/2, and (len**2 - p**2)/2 per suffix.
    return width + weight * (sum_sq - (members - 1) * prefix * prefix) / 2


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
    runs: list[tuple[list[int], int, int, int, float]] = []  # (members, prefix, tokens, sum of len**2, cost)
    for i in order:
        n = len(sequences[i])
        if runs:
            members, p, total, sum_sq, cost = runs[-1]
            shared = min(p, common_prefix_length(sequences[members[-1]], sequences[i]), n - 1)
            width = total + n - len(members) * shared
            joined = _row_cost(width, sum_sq + n * n, len(members) + 1, shared, w)
            if shared >= min_prefix and width <= max_row_tokens and joined <= cost + _alone_cost(n, w):
                runs[-1] = (members + [i], shared, total + n, sum_sq + n * n, joined)
                continue
        runs.append(([i], n - 1, n, n * n, _alone_cost(n, w)))
    rows, alone = [], []
    for members, p, total, _, _ in runs:
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
) -> tuple[RewardBatch, list[int]]:
    """The batch of ``rows`` (each right-padded to the widest) and the sequence index of each reward.

    ``reward_index`` is ``[n, 1]``, one entry per member at its last token, in the order of the returned
    indices. Rows lie end to end as one THD stream described by ``SharedPrefixParams``; only ``[t]``-sized
    index tensors are built, whatever the row width.
    """
    if not rows:
        raise ValueError("collate_shared_rows needs at least one row")
    width = padded_length(max(r.width for r in rows), pad_multiple)
    groups = [[(row.prefix, [sequences[i] for i in row.members])] for row in rows]
    batch = collate_prefix_groups(groups, width, pad_id, unit="prefix group")
    return batch, [i for row in rows for i in row.members]
