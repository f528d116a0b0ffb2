"""Learning-rate schedule and a guarded optimizer step that can skip a non-finite update."""

from __future__ import annotations

import math

from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_polar.config.schema import OptimConfig


def build_scheduler(optimizer, optim: OptimConfig, lr: float, train_iters: int) -> OptimizerParamScheduler:
    """Linear warm-up over ``warmup_fraction`` of the run, then cosine to ``lr * min_lr_ratio``."""
    warmup = int(round(optim.warmup_fraction * train_iters))
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=lr,
        min_lr=lr * optim.min_lr_ratio,
        lr_warmup_steps=warmup,
        lr_decay_steps=max(train_iters, warmup + 1),
        lr_decay_style="cosine",
        start_wd=optim.weight_decay,
        end_wd=optim.weight_decay,
        wd_incr_steps=max(train_iters, 1),
        wd_incr_style="constant",
    )


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def guarded_step(optimizer, clip_grad: float, loss_finite: bool) -> tuple[bool, float]:
    """Apply the update unless the loss or the gradient norm is not finite.

    The same steps as megatron-core's ``optimizer.step()``, with the norm checked before it is used:
    a NaN/Inf norm would otherwise turn every parameter into NaN through the clip coefficient. The
    decision is identical on every rank because the loss flag and the norm are all-reduced.
    Returns ``(applied, grad_norm)``.
    """
    found_inf = optimizer.prepare_grads()
    grad_norm = float(optimizer.get_grad_norm())
    if found_inf or not loss_finite or not math.isfinite(grad_norm):
        return False, grad_norm
    if clip_grad > 0:
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            params = opt.get_parameters()
            if params:
                clip_grad_by_total_norm_fp32(
                    params,
                    clip_grad,
                    grad_norm,
                    getattr(opt.config, "use_precision_aware_optimizer_no_fp8_or_ds_fp8", False),
                )
    return bool(optimizer.step_with_ready_grads()), grad_norm
