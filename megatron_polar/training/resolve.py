"""Config values a run settles at start-up: special-token ids from the data, ``auto`` lr and batch size.

Each function returns concrete values (or a config holding them); the trainer saves the resolved config
with every checkpoint, so a resumed run never re-derives them.
"""

from __future__ import annotations

import math
from dataclasses import replace

from megatron_polar.config.hparams import require_law_inputs, scaling_law_batch_size, scaling_law_lr
from megatron_polar.config.schema import PolarConfig
from megatron_polar.planning.params import count_parameters
from megatron_polar.utils.errors import ConfigError
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


def resolve_tokens(cfg: PolarConfig, tokenizer: dict) -> PolarConfig:
    """Fill the special-token ids from the data and check they agree with the model config."""
    m = cfg.model
    for key in ("reward_token_id", "split_token_id"):
        data_id = tokenizer.get(key)
        if getattr(m, key) is None:
            m = replace(m, **{key: data_id})
        elif data_id is not None and getattr(m, key) != data_id:
            raise ConfigError(f"model.{key}={getattr(m, key)} but the dataset was built with {data_id}")
    if tokenizer.get("vocab_size", 0) > m.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer['vocab_size']} ids but model.vocab_size={m.vocab_size}"
        )
    return replace(cfg, model=m)


def resolve_hparams(cfg: PolarConfig, pairs_per_sample: float, unit_multiple: int) -> tuple[float, int]:
    """Peak lr and global batch (in samples), computing "auto" values from the paper's laws."""
    n = count_parameters(cfg.model).total
    lr, gbs = cfg.optim.lr, cfg.train.global_batch_size
    if lr == "auto" or gbs == "auto":
        require_law_inputs(cfg.model.base_model_tokens, cfg.train.rm_tokens, need_dp=lr == "auto")
    if lr == "auto":
        lr = scaling_law_lr(n, cfg.model.base_model_tokens, cfg.train.rm_tokens)
        log.info(
            "optim.lr=auto -> %.3g (N=%.3g, Dp=%.3g, Drm=%.3g)",
            lr,
            n,
            cfg.model.base_model_tokens,
            cfg.train.rm_tokens,
        )
    if gbs == "auto":
        pairs = scaling_law_batch_size(n, cfg.train.rm_tokens)
        gbs = round_batch(pairs / pairs_per_sample, unit_multiple)
        got = gbs * pairs_per_sample
        log.info(
            "train.global_batch_size=auto -> law %d pairs -> %d samples (nearest multiple of %d) x %.2f "
            "pairs per sample = %.0f pairs per step (%+.1f%%)",
            round(pairs),
            gbs,
            unit_multiple,
            pairs_per_sample,
            got,
            100 * (got / pairs - 1),
        )
    return float(lr), int(gbs)


def with_hparams(cfg: PolarConfig, lr: float, global_batch_size: int) -> PolarConfig:
    """``cfg`` carrying the resolved peak lr and global batch in place of any ``auto``."""
    return replace(
        cfg,
        train=replace(cfg.train, global_batch_size=global_batch_size),
        optim=replace(cfg.optim, lr=lr),
    )


def round_batch(samples: float, unit_multiple: int) -> int:
    """The multiple of ``unit_multiple`` nearest to ``samples`` (at least one), so "auto" stays as close
    to the scaling law as the data-parallel layout allows (rounding up added 32% at 7B on 912 GPUs)."""
    return max(unit_multiple, int(math.floor(samples / unit_multiple + 0.5)) * unit_multiple)
