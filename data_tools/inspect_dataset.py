"""``inspect``: manifest statistics and decoded samples of a built pair dataset, segments made visible."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from megatron_polar.data.pair_dataset import PairDataset, open_pair_dataset
from megatron_polar.data.tokenizer import PolarTokenizer, load_tokenizer

BOS, SPLIT, REWARD = "⟦BOS⟧", "⟦SPLIT⟧", "⟦REWARD⟧"


def render_sequence(ids: Sequence[int], tok: PolarTokenizer, max_chars: int = 400) -> str:
    """Decode one POLAR sequence as ``⟦BOS⟧ <prompt+reference> ⟦SPLIT⟧ <prompt+candidate> ⟦REWARD⟧``.

    Each half is decoded separately and shortened to ``max_chars`` (middle elided) so long samples stay
    readable; anything unexpected (a missing BOS or reward token, several splits) is shown as ``⟦?⟧``.
    """
    ids = [int(i) for i in ids]
    head = BOS if ids and ids[0] == tok.bos_id else "⟦?no BOS⟧"
    tail = REWARD if ids and ids[-1] == tok.reward_token_id else "⟦?no REWARD⟧"
    body = ids[1 if head == BOS else 0 : -1 if tail == REWARD else None]
    splits = [i for i, t in enumerate(body) if t == tok.split_token_id]
    if len(splits) != 1:
        return f"{head} {_short(tok.decode(body), max_chars)} ⟦?{len(splits)} splits⟧ {tail}"
    first, second = body[: splits[0]], body[splits[0] + 1 :]
    return f"{head}{_short(tok.decode(first), max_chars)}{SPLIT}{_short(tok.decode(second), max_chars)}{tail}"


def _short(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return f"{text[:half]} …[{len(text) - 2 * half} chars]… {text[-half:]}"


def summary_lines(ds: PairDataset) -> list[str]:
    """Human-readable manifest statistics."""
    m = ds.manifest
    c, t, tok = m.counts, m.tokens, m.tokenizer
    lengths = ds.pair_lengths()
    lines = [
        f"dataset   {ds.prefix}  (format v{m.format_version}, {m.dtype}, {len(ds)} pairs)",
        f"tokenizer {tok['kind']} {tok['path']} vocab={tok['vocab_size']} "
        f"bos={tok['bos_id']} split={m.split_token_id} reward={m.reward_token_id}",
        f"limits    max_length={m.max_length} max_response_length={m.max_response_length}",
        f"rows      read={c['rows_read']} pairs={c['pairs_written']} skipped={c['skipped_total']} "
        f"truncated={c['truncated_pairs']}",
    ]
    for reason, info in c["skipped"].items():
        lines.append(f"  skipped {reason}: {info['count']}  e.g. {'; '.join(info['examples'][:2])}")
    lines.append(
        f"tokens    total={t['total']} max_sequence={t['max_sequence']} mean_pair={t['mean_pair']:.1f}"
    )
    if len(lengths):
        q = np.percentile(lengths.sum(axis=1), [50, 90, 99]).round().astype(int).tolist()
        lines.append(f"pair len  p50={q[0]} p90={q[1]} p99={q[2]}")
    for row, p in m["packing_projection"]["rows"].items():
        lines.append(
            f"packing   row={row}: efficiency {p['efficiency']:.4f}, {p['pairs_per_row']} pairs/row, "
            f"dropped {p['dropped_fraction']:.4%}"
        )
    return lines


def pair_records(prefix: str, start: int = 0, count: int | None = None) -> Iterator[dict]:
    """``{"pair", "chosen_ids", "rejected_ids"}`` for ``count`` pairs from ``start`` (all when None).

    The ids are exactly what the model sees (BOS first, reward token last), so they can be diffed
    against another implementation of the POLAR format.
    """
    ds = open_pair_dataset(prefix)
    if start < 0:
        raise ValueError(f"--start must be >= 0, got {start}")
    end = len(ds) if count is None else min(len(ds), start + count)
    for i in range(start, end):
        chosen, rejected = ds.pair(i)
        yield {"pair": i, "chosen_ids": chosen.tolist(), "rejected_ids": rejected.tolist()}


def inspect(
    prefix: str, samples: int = 3, tokenizer: str | None = None, max_chars: int = 400, start: int = 0
) -> str:
    """The full ``inspect`` report as text: statistics, then ``samples`` decoded pairs from ``start``."""
    ds = open_pair_dataset(prefix)
    lines = summary_lines(ds)
    if samples > 0 and len(ds):
        info = ds.manifest.tokenizer
        tok = load_tokenizer(
            tokenizer or info["path"],
            split_token_id=info["split_token_id"],
            reward_token_id=info["reward_token_id"],
            bos_token_id=info["bos_id"],
        )
        if tokenizer is None and tok.sha256 != info["sha256"]:
            lines.append(f"WARNING: {info['path']} changed since the build (sha256 differs)")
        for i in range(start, min(len(ds), start + samples)):
            chosen, rejected = ds.pair(i)
            lines.append(f"--- pair {i} ---")
            lines.append(f"[chosen   {len(chosen)} tokens] {render_sequence(chosen, tok, max_chars)}")
            lines.append(f"[rejected {len(rejected)} tokens] {render_sequence(rejected, tok, max_chars)}")
    return "\n".join(lines)
