"""The paper's hyperparameter scaling laws for reward-model pre-training (POLAR, appendix A.1.2).

    LR        = 0.0002306 * N^0.01125 * Dp^-0.66587 * Drm^0.33916
    BatchSize = 31.9032   * N^0.06944 * Drm^0.52997

The paper states all inputs "in millions", but only N in millions with Dp and Drm in *billions*
reproduces its reported values (LR 1.4e-5 / batch 1940 for 1.8B on 2.5T + 0.94T tokens, and
1.67e-5 / 4343 for 7B on 4.0T + 3.6T tokens, each within 5%), so those are the units used here.
The batch size counts pairs.
"""

from __future__ import annotations

from megatron_polar.utils.errors import ConfigError


def scaling_law_lr(params: float, base_model_tokens: float, rm_tokens: float) -> float:
    """Peak learning rate for ``params`` parameters, ``base_model_tokens`` (Dp) and ``rm_tokens`` (Drm)."""
    n, dp, drm = params / 1e6, base_model_tokens / 1e9, rm_tokens / 1e9
    return 0.0002306 * n**0.01125 * dp**-0.66587 * drm**0.33916


def scaling_law_batch_size(params: float, rm_tokens: float) -> float:
    """Global batch size in pairs (unrounded)."""
    n, drm = params / 1e6, rm_tokens / 1e9
    return 31.9032 * n**0.06944 * drm**0.52997


def require_law_inputs(base_model_tokens: float | None, rm_tokens: float | None, need_dp: bool) -> None:
    """Name the missing key when an "auto" value cannot be computed."""
    if need_dp and not base_model_tokens:
        raise ConfigError("optim.lr=auto needs model.base_model_tokens (tokens the base LLM was trained on)")
    if not rm_tokens:
        raise ConfigError('"auto" lr or global_batch_size needs train.rm_tokens (tokens of RM pre-training)')
