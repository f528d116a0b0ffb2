"""Why ``guarded_step`` stays: megatron-core's public ``optimizer.step()`` applies a NaN gradient.

With bf16 or fp32 there is no grad scaler, so ``step()`` finds no ``found_inf`` and Adam turns the
parameters NaN (megatron-core 0.16.1, optimizer/optimizer.py:1307-1338 and :540; see the docstring
of ``training/optim.py:guarded_step``). ``guarded_step`` on the same gradients leaves every parameter
as it was. Should a megatron-core release skip such steps itself, the second assertion fails and
``guarded_step`` can give way to ``optimizer.step()``.
"""

from __future__ import annotations

import pytest

from tests.support.launcher import run_distributed

pytestmark = pytest.mark.distributed


def nan_gradient_worker(precision: str) -> dict:
    """One rank: a NaN in one gradient, stepped by ``guarded_step`` and then by ``optimizer.step()``."""
    import torch

    from megatron_polar.config import load_config
    from megatron_polar.model.builder import build_model_chunks
    from megatron_polar.parallel import topology
    from megatron_polar.training.optim import guarded_step
    from megatron_polar.training.setup import build_optimizer, wrap_ddp

    cfg = load_config([f"train.precision={precision}", "optim.clip_grad=1.0"])
    topology.initialize(cfg.parallel, seed=1234)
    wrapped = wrap_ddp(cfg, build_model_chunks(cfg))
    optimizer = build_optimizer(cfg, wrapped, lr=1e-3)
    params = [p for m in wrapped for p in m.parameters()]

    def poison() -> None:
        for m in wrapped:
            m.zero_grad_buffer()
        optimizer.zero_grad()
        for p in params:
            p.main_grad.fill_(0.01)
        params[0].main_grad.view(-1)[0] = float("nan")

    before = [p.detach().clone() for p in params]
    poison()
    applied, norm = guarded_step(optimizer, cfg.optim.clip_grad, loss_finite=True)
    unchanged = all(torch.equal(b, p.detach()) for b, p in zip(before, params))
    poison()
    public = optimizer.step()
    return {
        "guarded_applied": applied,
        "guarded_norm_is_nan": norm != norm,
        "guarded_unchanged": unchanged,
        "public_success": bool(public[0]),
        "public_nan_params": sum(bool(torch.isnan(p.detach()).any()) for p in params),
        "params": len(params),
    }


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_public_step_applies_a_nan_gradient_that_guarded_step_skips(precision):
    [r] = run_distributed(nan_gradient_worker, 1, precision, timeout=300)
    assert not r["guarded_applied"] and r["guarded_norm_is_nan"] and r["guarded_unchanged"]
    assert r["public_success"] and r["public_nan_params"] > 0, r
