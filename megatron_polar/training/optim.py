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

    The same steps as megatron-core's ``optimizer.step()``, with the norm checked before it is used.
    The decision is identical on every rank because the loss flag and the norm are all-reduced.
    Returns ``(applied, grad_norm)``; the norm is returned on skipped steps too, for the log.

    Why not the public ``optimizer.step()`` (megatron-core 0.16.1; ``get_megatron_optimizer`` always
    returns a ``ChainedOptimizer``, optimizer/__init__.py:602 and :689, whose ``step()`` is
    optimizer/optimizer.py:1307-1338): its only skip is ``prepare_grads()`` reporting ``found_inf``
    (:1310-1312), and that flag is set only by a grad scaler (``MixedPrecisionOptimizer.prepare_grads``,
    ``if self.grad_scaler:`` at :540, which ``DistributedOptimizer`` inherits; ``FP32Optimizer.prepare_grads`` returns False, :922-941). bf16 and
    fp32 runs have no grad scaler (optimizer/__init__.py:427-441), so a NaN/Inf gradient reaches the
    clip (a NaN norm makes ``clip_coeff < 1.0`` false, clip_grads.py:172-173, so nothing is scaled) and
    then Adam, and every parameter turns NaN. The loss is not consulted at all. megatron-core's one
    NaN check, DDP's ``check_for_nan_in_grad`` (param_and_grad_buffer.py:212-236), raises through the
    rerun state machine (rerun_state_machine.py:517-532) instead of skipping, so it cannot give
    ``train.nan_policy=skip``. Checking first and then calling ``step()`` is not possible either:
    ``step()`` runs ``prepare_grads()`` again, which copies the gradients and, under fp16, unscales them
    and updates the loss scale a second time. So this function calls the public stages itself
    (``prepare_grads``, ``get_grad_norm``, ``step_with_ready_grads``, which for the distributed optimizer
    also starts the parameter all-gather, distrib_optimizer.py:2598-2623) and repeats only the clipping
    loop of ``ChainedOptimizer.step`` (:1317-1331), which has no public method of its own.
    ``tests/training/test_nan.py`` holds the guarantee: the NaN step is skipped, parameters and the
    schedule untouched.
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
