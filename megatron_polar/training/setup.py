"""Wire the model chunks into megatron-core's DDP, distributed optimizer and grad-finalisation hooks."""

from __future__ import annotations

import os

from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
from megatron.core.optimizer import get_megatron_optimizer

from megatron_polar.config.schema import PolarConfig
from megatron_polar.config.to_mcore import ddp_config, ddp_config_aligns_param_gather, optimizer_config
from megatron_polar.model.reward_model import PolarRewardModel
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


def apply_determinism_env(cfg: PolarConfig, environ: dict | None = None) -> None:
    """With ``train.deterministic=true``, turn off Transformer Engine's non-deterministic attention.

    The launchers export NVTE_ALLOW_NONDETERMINISTIC_ALGO=1 for speed; megatron-core's TE attention
    refuses deterministic_mode unless it is 0 (megatron/core/extensions/transformer_engine.py:1254-1260
    in 0.16.1), and TE reads it when the attention runs (dot_product_attention.py:762), so setting it
    here, before the model is built, is in time.
    """
    environ = os.environ if environ is None else environ
    if cfg.train.deterministic and environ.get("NVTE_ALLOW_NONDETERMINISTIC_ALGO", "1") != "0":
        log.info("train.deterministic=true: setting NVTE_ALLOW_NONDETERMINISTIC_ALGO=0")
        environ["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] = "0"


def wrap_ddp(cfg: PolarConfig, chunks: list[PolarRewardModel]) -> list[DistributedDataParallel]:
    """Wrap each chunk in megatron-core's DDP and install the hooks its schedules expect."""
    dcfg = ddp_config(cfg)
    wrapped = [
        DistributedDataParallel(config=chunk.config, ddp_config=dcfg, module=chunk, disable_bucketing=i > 0)
        for i, chunk in enumerate(chunks)
    ]
    tconfig = chunks[0].config
    # As in Megatron's own loop: without these the third step with overlapped reduction fails
    # ("multiple communication calls outstanding").
    tconfig.finalize_model_grads_func = finalize_model_grads
    no_sync = [m.no_sync for m in wrapped]
    tconfig.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    if cfg.parallel.overlap_grad_reduce:
        grad_sync = [m.start_grad_sync for m in wrapped]
        tconfig.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
    # The schedules dispatch the parameter all-gathers themselves only when they are aligned across
    # pipeline stages; otherwise DDP's forward pre-hooks dispatch them, and a param_sync_func as well
    # would start each gather twice. Megatron sets it under the same condition (training.py:4360-4363
    # at d98e8a6), and aligns only under the interleaved schedule (arguments.py:1010-1013).
    if ddp_config_aligns_param_gather(cfg):
        tconfig.param_sync_func = [m.start_param_sync for m in wrapped]
        if len(wrapped) == 1:
            tconfig.param_sync_func = tconfig.param_sync_func[0]
    return wrapped


def force_param_sync(cfg: PolarConfig, wrapped: list[DistributedDataParallel]) -> None:
    """Finish the parameter all-gather that ``overlap_param_gather`` defers to the next forward pass.

    With the overlap, the optimizer step leaves the other ranks' shards of each parameter one step old
    until the next forward gathers them, so a checkpoint written in between would hold mixed weights.
    Megatron forces this sync before every save (megatron/training/training.py:3790-3795 and
    :3830-3831 at d98e8a6); DDP's ``start_param_sync(force_sync=True)`` is synchronous
    (megatron/core/distributed/param_and_grad_buffer.py:264-272 in 0.16.1).
    """
    if cfg.parallel.overlap_param_gather and cfg.parallel.use_distributed_optimizer:
        for model in wrapped:
            model.start_param_sync(force_sync=True)


def build_optimizer(cfg: PolarConfig, wrapped: list[DistributedDataParallel], lr: float):
    """megatron-core's (distributed) AdamW over the wrapped chunks, with the loss-scale hook installed.

    As Megatron's own loop does (megatron/training/training.py:4344 at d98e8a6,
    ``config.grad_scale_func = optimizer.scale_loss``): the schedules multiply the loss by it before
    backward (megatron/core/pipeline_parallel/schedules.py:477-478 in 0.16.1), and the optimizer divides
    the gradients by the same scale in ``prepare_grads``. Without it fp16 gradients were divided by
    2^32 without ever being multiplied, and vanished. For bf16/fp32 the scale is 1.
    """
    optimizer = get_megatron_optimizer(optimizer_config(cfg, lr), wrapped)
    for model in wrapped:
        model.config.grad_scale_func = optimizer.scale_loss
    return optimizer
