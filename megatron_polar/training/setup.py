"""Wire the model chunks into megatron-core's DDP, distributed optimizer and grad-finalisation hooks."""

from __future__ import annotations

from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
from megatron.core.optimizer import get_megatron_optimizer

from megatron_polar.config.schema import PolarConfig
from megatron_polar.config.to_mcore import ddp_config, optimizer_config
from megatron_polar.model.reward_model import PolarRewardModel


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
    if cfg.parallel.overlap_param_gather and cfg.parallel.use_distributed_optimizer:
        tconfig.param_sync_func = [m.start_param_sync for m in wrapped]
        if len(wrapped) == 1:
            tconfig.param_sync_func = tconfig.param_sync_func[0]
    return wrapped


def build_optimizer(cfg: PolarConfig, wrapped: list[DistributedDataParallel], lr: float):
    """megatron-core's (distributed) AdamW over the wrapped chunks."""
    return get_megatron_optimizer(optimizer_config(cfg, lr), wrapped)
