"""Bradley-Terry loss and metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from megatron_polar.training.loss import means, pair_loss


def test_loss_and_metrics_match_hand_computation():
    rewards = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    stats = pair_loss(rewards)
    margins = [2.0, -1.0, 0.0]
    want_loss = sum(math.log1p(math.exp(-m)) for m in margins)
    assert float(stats.loss) == pytest.approx(want_loss)
    assert float(stats.pairs) == 3
    m = means(stats.sums, stats.pairs)
    assert m["loss"] == pytest.approx(want_loss / 3)
    assert m["accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)  # a tie counts half
    assert m["margin"] == pytest.approx(1.0 / 3)
    assert m["reward_chosen"] == pytest.approx(2.5 / 3)
    assert m["reward_rejected"] == pytest.approx(1.5 / 3)


def test_masked_pairs_are_ignored_and_invalid_values_stay_out():
    rewards = torch.tensor([[1.0, 0.0], [float("nan"), 3.0], [0.0, 2.0]])
    valid = torch.tensor([True, False, True])
    stats = pair_loss(rewards.nan_to_num(0.0), valid)
    want = math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))
    assert float(stats.loss) == pytest.approx(want)
    assert float(stats.pairs) == 2
    assert means(stats.sums, stats.pairs)["accuracy"] == pytest.approx(0.5)


def test_gradient_is_sigmoid_of_negative_margin():
    rewards = torch.tensor([[0.3, -0.2]], requires_grad=True)
    pair_loss(rewards).loss.backward()
    s = torch.sigmoid(torch.tensor(-0.5))
    torch.testing.assert_close(rewards.grad, torch.tensor([[-s, s]]))


def test_large_margins_are_numerically_stable():
    stats = pair_loss(torch.tensor([[100.0, -100.0], [-100.0, 100.0]]))
    assert torch.isfinite(stats.loss)
    assert float(stats.loss) == pytest.approx(200.0, rel=1e-6)


def test_split_invariance_of_summed_loss():
    """Sums over any split of a batch add up to the whole; the mean divides by the global pair count."""
    rewards = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    whole = pair_loss(rewards)
    parts = [pair_loss(rewards[i : i + 2]) for i in range(0, 8, 2)]
    assert sum(float(p.loss) for p in parts) == pytest.approx(float(whole.loss))
    torch.testing.assert_close(sum(p.sums for p in parts), whole.sums)


def test_zero_pairs_gives_zero_metrics():
    assert means(torch.zeros(5), 0) == {k: 0.0 for k in means(torch.zeros(5), 1)}
