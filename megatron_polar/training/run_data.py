"""The batch streams of one training run: open the built datasets, describe the pools, and build the
train and validation :class:`~megatron_polar.data.sampler.PairBatches` for this data-parallel rank.

The trainer calls these in order: :func:`open_pools` (mmap, no token reads), :func:`batch_options`
(every option the two streams share), then builds the train stream, settles the global batch, and
:func:`build_valid_batches` sizes the validation stream from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_polar.config.schema import PolarConfig
from megatron_polar.data.plan_store import PlanStore
from megatron_polar.data.sampler import PairBatches, PoolRecipe, check_tokenizers, open_datasets, pool_recipes
from megatron_polar.parallel import comm
from megatron_polar.parallel.topology import Topology
from megatron_polar.utils.errors import ConfigError


def open_pools(cfg: PolarConfig) -> tuple[PoolRecipe, PoolRecipe | None, dict]:
    """Open the datasets (mmap, no token reads) and describe the pools; drawing them is the plan writer's job.

    Returns ``(train pool, validation pool or None, the tokenizer entry of the datasets' manifests)``.
    """
    if not cfg.data.train:
        raise ConfigError("data.train is empty: pass 'data.train=[{path: <prefix>, weight: 1.0}]'")
    shared = cfg.data.share_prefix  # every dataset must then carry its shared-prefix sidecar
    train_sets = open_datasets(cfg.data.train, shared)
    valid_sets = open_datasets(cfg.data.valid, shared) if cfg.data.valid else []
    tokenizer = check_tokenizers(train_sets + valid_sets)
    train, valid = pool_recipes(cfg.data, train_sets, valid_sets)
    return train, valid, tokenizer


def batch_options(cfg: PolarConfig, topo: Topology, use_te: bool) -> dict[str, Any]:
    """Keyword arguments of :class:`PairBatches` shared by the train and validation streams."""
    return dict(
        layout=cfg.data.layout,
        seq_length=cfg.data.seq_length,
        micro_batch_size=cfg.train.micro_batch_size,
        dp_rank=topo.dp_rank,
        dp_size=topo.dp_size,
        seed=cfg.data.seed,
        window=cfg.data.pack_window,
        pad_id=0,
        thd=use_te and cfg.data.layout == "packed",
        share_prefix=cfg.data.share_prefix,
        store=PlanStore(
            cfg.data.plan_dir or Path(cfg.logging.run_dir) / "plans",
            is_writer=topo.rank == 0,
            barrier=comm.barrier,
            workers=cfg.data.plan_workers,
        ),
    )


def build_valid_batches(
    valid_pool: PoolRecipe | None, options: dict[str, Any], global_batch_size: int, unit: int
) -> PairBatches | None:
    """The validation stream, or None without validation data (or with an empty validation split).

    Its global batch is the training one, capped at the whole split, in multiples of ``unit``
    (micro-batch x data-parallel size).
    """
    if valid_pool is None:  # pool_recipes returns None when there is no validation data
        return None
    valid = PairBatches(valid_pool, **options, shuffle=False, name="valid")
    samples = len(valid.plan(0))
    if not samples:
        return None
    valid.set_global_batch_size(max(unit, min(global_batch_size, samples // unit * unit)))
    return valid
