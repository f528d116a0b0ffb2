"""The one translation from our config to megatron-core's ``TransformerConfig`` and DDP/optimizer configs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig
from megatron.core.transformer import TransformerConfig

from megatron_polar.config.schema import PolarConfig

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def params_dtype(cfg: PolarConfig) -> torch.dtype:
    """The dtype model weights are held in for compute."""
    return _DTYPES[cfg.train.precision]


def transformer_config(cfg: PolarConfig, *, use_te: bool, on_gpu: bool) -> TransformerConfig:
    """InternLM2/Llama-style decoder (RMSNorm, SwiGLU, RoPE, GQA, no biases) for megatron-core."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    dtype = params_dtype(cfg)
    fp8_kwargs = {}
    if m.fp8 is not None:
        fp8_kwargs = dict(
            fp8=m.fp8,
            fp8_recipe=m.fp8_recipe,
            fp8_amax_history_len=m.fp8_amax_history_len,
            fp8_amax_compute_algo=m.fp8_amax_compute_algo,
            fp8_margin=m.fp8_margin,
        )
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size,
        kv_channels=m.hidden_size // m.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline_model_parallel_size,
        sequence_parallel=p.sequence_parallel,
        # gloo matches batched isend/irecv pairs out of order under the interleaved schedule (activations
        # of one micro-batch arrive as another's); NCCL batches them correctly and faster.
        batch_p2p_comm=on_gpu,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        autocast_dtype=dtype,
        # The loss function returns (sum of pair losses, number of pairs): megatron-core then divides by
        # the pairs of the whole global batch, so the loss does not depend on how the batch is split.
        calculate_per_token_loss=True,
        # Fused kernels exist only on GPUs; on CPU megatron-core's plain PyTorch paths run.
        masked_softmax_fusion=on_gpu,
        bias_activation_fusion=on_gpu and use_te,
        # TE's fused RoPE reads THD cu_seqlens on the device; megatron-core's unfused THD path syncs with
        # the host in every layer (rope_utils.py:204 .tolist(), :211 a tensor comparison).
        apply_rope_fusion=on_gpu and use_te,
        persist_layer_norm=on_gpu and use_te,
        gradient_accumulation_fusion=on_gpu and use_te,
        recompute_granularity=m.recompute_granularity,
        recompute_method=m.recompute_method,
        recompute_num_layers=m.recompute_num_layers,
        deterministic_mode=t.deterministic,
        use_cpu_initialization=not on_gpu,
        **fp8_kwargs,
    )


def ddp_config_aligns_param_gather(cfg: PolarConfig) -> bool:
    """Whether the parameter all-gathers are aligned across pipeline stages (dispatched by the schedule).

    As Megatron decides: only with the overlapped gather under the interleaved schedule
    (megatron/training/arguments.py:1010-1013 at d98e8a6 turns it off otherwise).
    """
    p = cfg.parallel
    return bool(
        p.overlap_param_gather and p.use_distributed_optimizer and p.virtual_pipeline_model_parallel_size
    )


def ddp_config(cfg: PolarConfig) -> DistributedDataParallelConfig:
    """Gradient buffers in fp32 with overlapped reduce(-scatter) for the distributed optimizer.

    The bucket size is megatron-core's own choice: max(4e7, 1e6 x DP) elements with an overlapped
    reduce, one bucket without (megatron/core/distributed/distributed_data_parallel.py:62-68, 0.16.1).
    """
    p = cfg.parallel
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather and p.use_distributed_optimizer,
        align_param_gather=ddp_config_aligns_param_gather(cfg),
        use_distributed_optimizer=p.use_distributed_optimizer,
        check_for_nan_in_grad=False,  # we check the loss and grad norm ourselves, on every step
    )


def optimizer_config(cfg: PolarConfig, lr: float) -> OptimizerConfig:
    """AdamW (decoupled weight decay) as megatron-core's optimizer config."""
    o, p = cfg.optim, cfg.parallel
    dtype = params_dtype(cfg)
    return OptimizerConfig(
        optimizer="adam",
        lr=lr,
        min_lr=lr * o.min_lr_ratio,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        params_dtype=dtype,
        use_distributed_optimizer=p.use_distributed_optimizer,
        overlap_param_gather_with_optimizer_step=False,
        # fp16 only: start the dynamic loss scale at torch GradScaler's 2^16 rather than megatron-core's
        # 2^32, which overflows and skips the first ~16 updates while it halves its way down.
        initial_loss_scale=2.0**16,
    )
