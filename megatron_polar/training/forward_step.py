"""The megatron-core contract: a forward step returning ``(rewards, loss_func)`` into
``get_forward_backward_func()``, and the reduction of what the loss functions report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_polar.data.batch import RewardBatch
from megatron_polar.parallel import comm
from megatron_polar.training.loss import METRIC_NAMES, means, pair_loss


def loss_func(batch: RewardBatch, rewards: torch.Tensor):
    """Sum of pair losses and the pair count (megatron-core divides by the global pair count)."""
    stats = pair_loss(rewards)
    report = {
        "sums": torch.cat([stats.sums, stats.pairs.detach().view(1)]),
        "rewards": rewards.detach().float(),
    }
    return stats.loss, stats.pairs.detach().to(torch.int), report


def forward_step(device: torch.device, data_iterator, model):
    """One micro-batch: every pipeline stage reads the same batch (tokens, mask, positions)."""
    batch = next(data_iterator).to(device)
    return model(batch), partial(loss_func, batch)


@dataclass
class StepResult:
    """What one forward(-backward) pass over a global batch reports, reduced over data parallelism."""

    metrics: dict[str, float]  # loss, accuracy, margin, reward_chosen, reward_rejected
    pairs: int
    rewards: list[torch.Tensor]  # this rank's per-micro-batch rewards [pairs, 2] (last stage only)
    finite: bool  # loss finite on every rank


def _schedule_shape(batch: RewardBatch) -> tuple[int, int]:
    rows, seq = batch.tokens.shape
    return seq, rows


def forward_backward(
    chunks: Sequence[torch.nn.Module],
    micro_batches: Sequence[RewardBatch],
    device: torch.device,
    forward_only: bool = False,
) -> StepResult:
    """Run megatron-core's schedule over ``micro_batches`` and reduce the reported metrics."""
    seq_length, rows = _schedule_shape(micro_batches[0])
    iterators = [iter(micro_batches) for _ in chunks]
    store = get_forward_backward_func()(
        forward_step_func=partial(forward_step, device),
        data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=list(chunks),
        num_microbatches=len(micro_batches),
        seq_length=seq_length,
        micro_batch_size=rows,
        forward_only=forward_only,
    )
    sums = torch.zeros(len(METRIC_NAMES) + 1, dtype=torch.float64)
    rewards = []
    for report in store:
        sums += report["sums"].double().cpu()
        rewards.append(report["rewards"].cpu())
    # Sums live on the last pipeline stage: share them with every rank, then over data parallelism.
    sums = sums.to(device)
    comm.share_from_last_stage(sums)
    comm.sum_over_data_parallel(sums)
    sums = sums.cpu()
    pairs = float(sums[-1])
    finite = bool(torch.isfinite(sums).all())
    return StepResult(metrics=means(sums[:-1], pairs), pairs=int(pairs), rewards=rewards, finite=finite)
