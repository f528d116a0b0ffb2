"""Attended lengths of a dataset's pairs, with and without a shared prefix.

A POLAR pair is two sequences, ``[BOS] P R <|reward|> P C`` for the chosen and the rejected candidate
``C``; everything before the candidates (the longest common prefix of the two id sequences) is the
same. Attention FLOPs grow with the (query, key) pairs a token attends to, so the planner needs them
summed over the data, not a fixed length:

- without sharing, each sequence of ``L`` tokens is causal: ``L^2 / 2`` pairs for ``L`` tokens, and the
  per-token attended length ``2 * pairs / tokens`` is the token-weighted ``E[L^2] / E[L]``;
- with the prefix (``p`` tokens) computed once per pair, the prefix attends causally to itself
  (``p^2 / 2``) and each suffix of ``a`` tokens to the prefix and causally to itself
  (``a * p + a^2 / 2``), for ``p + a_chosen + a_rejected`` tokens.

``length_stats`` returns both, so ``flops.estimate_flops`` takes the attended length as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LengthStats:
    """Token and attention totals of a set of pairs (``attn_length`` is per processed token)."""

    pairs: int
    tokens: float  # processed tokens, both sequences of every pair
    attention_pairs: float  # causal (query, key) pairs summed over the data
    shared_tokens: float  # processed tokens with the prefix once per pair
    shared_attention_pairs: float

    @property
    def attn_length(self) -> float:
        """Token-weighted ``E[L^2] / E[L]`` of the unshared sequences."""
        return 2.0 * self.attention_pairs / self.tokens

    @property
    def shared_attn_length(self) -> float:
        return 2.0 * self.shared_attention_pairs / self.shared_tokens

    @property
    def token_ratio(self) -> float:
        """Processed tokens with sharing over without."""
        return self.shared_tokens / self.tokens

    def to_dict(self) -> dict:
        return {
            "pairs": self.pairs,
            "tokens_per_pair": self.tokens / self.pairs,
            "attn_length": self.attn_length,
            "shared_tokens_per_pair": self.shared_tokens / self.pairs,
            "shared_attn_length": self.shared_attn_length,
            "token_ratio": self.token_ratio,
        }


def length_stats(chosen: np.ndarray, rejected: np.ndarray, prefix: np.ndarray) -> LengthStats:
    """Totals for pairs of ``chosen`` / ``rejected`` lengths sharing ``prefix`` tokens (arrays of ``[N]``)."""
    c, r, p = (np.asarray(x, dtype=np.float64) for x in (chosen, rejected, prefix))
    if not (c.shape == r.shape == p.shape) or c.ndim != 1 or len(c) == 0:
        raise ValueError("chosen, rejected and prefix must be non-empty 1-D arrays of one length")
    if (p >= np.minimum(c, r)).any() or (p < 0).any():
        raise ValueError("a shared prefix must leave every sequence at least one token of its own")
    ac, ar = c - p, r - p
    return LengthStats(
        pairs=len(c),
        tokens=float((c + r).sum()),
        attention_pairs=float((c * c + r * r).sum() / 2.0),
        shared_tokens=float((p + ac + ar).sum()),
        shared_attention_pairs=float((p * p / 2.0 + (ac + ar) * p + (ac * ac + ar * ar) / 2.0).sum()),
    )


def paper_length_mix(pairs: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic (chosen, rejected, prefix) lengths of the paper's pre-training mix.

    Appendix A.1.1: prompt 1..1024 tokens, reference and candidates capped at 4096, drawn here
    uniformly. A sequence is ``[BOS] P R <|reward|> P C <reward>``: ``2P + R + C + 3`` tokens, of which
    ``2P + R + 2`` are shared by the two candidates. (E[L^2]/E[L] comes to about 5,700 and the shared
    token ratio to about 0.70, the figures of the issue.)
    """
    rng = np.random.default_rng(seed)
    prompt = rng.integers(1, 1025, pairs)
    reference = rng.integers(1, 4097, pairs)
    chosen, rejected = rng.integers(1, 4097, pairs), rng.integers(1, 4097, pairs)
    prefix = 2 * prompt + reference + 2
    return prefix + chosen + 1, prefix + rejected + 1, prefix
