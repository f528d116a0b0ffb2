"""Bradley-Terry pair loss and its metrics, as pure tensor functions.

POLAR pre-training and fine-tuning share one objective: ``-log sigmoid(r_chosen - r_rejected)`` where
both rewards are computed against the same reference. Losses are returned as *sums* with a pair count,
so that a global batch split any way across micro-batches and data-parallel ranks gives the same mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

METRIC_NAMES = ("loss", "accuracy", "margin", "reward_chosen", "reward_rejected")


@dataclass
class PairStats:
    """Sums over the valid pairs of a micro-batch; divide by ``pairs`` for means."""

    loss: Tensor  # sum of -log sigmoid(margin); carries the graph
    pairs: Tensor  # number of valid pairs (float scalar)
    sums: Tensor  # [len(METRIC_NAMES)] detached sums: loss, correct, margin, chosen, rejected


def pair_loss(rewards: Tensor, valid: Tensor | None = None) -> PairStats:
    """Bradley-Terry loss over ``rewards`` shaped ``[pairs, 2]`` (chosen, rejected).

    ``valid`` masks out padding or broken pairs (False = ignored). A tie counts as half correct, so
    an untrained model scores 0.5 accuracy rather than 0.
    """
    rewards = rewards.float()
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    margin = chosen - rejected
    weight = torch.ones_like(margin) if valid is None else valid.to(margin.dtype)
    per_pair = -F.logsigmoid(margin)
    loss = (per_pair * weight).sum()
    with torch.no_grad():
        correct = (margin > 0).to(margin.dtype) + 0.5 * (margin == 0).to(margin.dtype)
        sums = torch.stack(
            [
                per_pair.detach() @ weight,
                correct @ weight,
                margin.detach() @ weight,
                chosen.detach() @ weight,
                rejected.detach() @ weight,
            ]
        )
    return PairStats(loss=loss, pairs=weight.sum(), sums=sums)


def means(sums: Tensor, pairs: Tensor | float) -> dict[str, float]:
    """Metric means from accumulated sums (zero pairs gives NaN-free zeros)."""
    n = float(pairs)
    if n == 0:
        return {name: 0.0 for name in METRIC_NAMES}
    return {name: float(v) / n for name, v in zip(METRIC_NAMES, sums.tolist())}
