"""Length-bucketed micro-batches of single sequences for scoring.

Scoring reads one reward per sequence, at its last token (the reward token). Sequences are sorted by
length and grouped greedily under a token budget (rows x padded length), each micro-batch padded only to
its own longest sequence rounded up to ``pad_multiple``; the caller restores the original order.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_polar.data.batch import RewardBatch
from megatron_polar.data.batching import place_rows


def padded_length(n: int, pad_multiple: int) -> int:
    """``n`` rounded up to a multiple of ``pad_multiple``."""
    return -(-n // pad_multiple) * pad_multiple


def collate_sequences(
    seqs: Sequence[Sequence[int]],
    seq_length: int | None = None,
    *,
    pad_id: int = 0,
    pad_multiple: int = 16,
    explicit_mask: bool = False,
) -> RewardBatch:
    """One right-padded row per sequence, ``reward_index`` shaped ``[n, 1]`` at each last token.

    ``seq_length`` defaults to the longest sequence rounded up to ``pad_multiple``. With
    ``explicit_mask`` a boolean causal mask (True = masked) is attached; without it both specs attend
    causally (SDPA's causal kernel, TE's causal mask type). Padding sits after the reward token, so
    causal attention keeps it out of every reward. The rows are the padded layout of
    ``data.batching.place_rows``: every row is one sequence from column 0, so the mask and the position
    ids are broadcast views of one cached causal mask and one ``arange`` (no per-row ``O(s^2)`` memory).
    """
    if not seqs:
        raise ValueError("collate_sequences needs at least one sequence")
    lengths = [len(s) for s in seqs]
    if seq_length is None:
        seq_length = padded_length(max(lengths), pad_multiple)
    for r, n in enumerate(lengths):
        if not 0 < n <= seq_length:
            raise ValueError(f"sequence {r} has {n} tokens; it must have 1..{seq_length}")
    placed = place_rows([[(0, [seq])] for seq in seqs], seq_length, pad_id, pad_tail="extend")
    return RewardBatch(
        tokens=placed.tokens,
        position_ids=placed.position_ids(),
        reward_index=placed.reward_index.view(-1, 1),
        attention_mask=placed.attention_mask() if explicit_mask else None,
        num_real_tokens=placed.num_real_tokens,
    )


def plan_micro_batches(
    lengths: Sequence[int],
    batch_tokens: int,
    max_sequences: int,
    pad_multiple: int = 16,
    overhead_tokens: int = 256,
) -> list[list[int]]:
    """Group sequence indices into micro-batches of consecutive lengths, longest first.

    A micro-batch holds at most ``max_sequences`` sequences and ``rows * padded_longest <= batch_tokens``
    (a sequence longer than the budget gets a micro-batch of its own). Among such plans it picks the
    cheapest, counting each micro-batch as ``overhead_tokens + rows * padded_longest`` token slots: it
    cuts where the padding a cut saves outweighs the fixed cost of one more forward pass (the default,
    256 token slots, is about that cost for the tiny CPU model and for a 7B model on a GPU), so short and
    long sequences only share a width when that is cheaper. The plan depends only on the lengths, so the
    same inputs always meet the same batches.
    """
    if batch_tokens < 1 or max_sequences < 1 or overhead_tokens < 1:
        raise ValueError("batch_tokens, max_sequences and overhead_tokens must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    widths = [padded_length(lengths[i], pad_multiple) for i in order]
    n = len(order)
    # cost[j]: cheapest plan of the last n - j sequences; cut[j]: where its first micro-batch ends.
    cost = [0] * (n + 1)
    cut = [n] * (n + 1)
    for j in range(n - 1, -1, -1):
        best, best_end = None, j + 1
        for end in range(j + 1, min(n, j + max_sequences) + 1):
            rows = end - j
            if rows > 1 and rows * widths[j] > batch_tokens:
                break
            c = overhead_tokens + rows * widths[j] + cost[end]
            if best is None or c < best or (c == best and end > best_end):
                best, best_end = c, end
        cost[j], cut[j] = best, best_end
    batches, j = [], 0
    while j < n:
        batches.append(order[j : cut[j]])
        j = cut[j]
    return batches
