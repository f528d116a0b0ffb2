"""Functions run inside spawned gloo ranks by the conversion tests."""

from __future__ import annotations

from dataclasses import replace

from megatron_polar.checkpoint import manager
from megatron_polar.config import from_yaml, to_yaml
from megatron_polar.config.schema import ParallelConfig
from megatron_polar.model.builder import build_model_chunks
from megatron_polar.parallel import topology


def resave_at_layout(src: str, dst_root: str, tp: int, pp: int, step: int) -> dict:
    """Load the checkpoint ``src`` at TP=tp x PP=pp and save it again from that layout under ``dst_root``."""
    cfg = from_yaml(manager.read_config_yaml(src))
    parallel = ParallelConfig(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        use_distributed_optimizer=False,
        overlap_grad_reduce=False,
        backend="gloo",
    )
    cfg = replace(cfg, parallel=parallel)
    topo = topology.initialize(cfg.parallel, seed=cfg.train.seed)
    chunks = build_model_chunks(cfg)
    manager.load(src, chunks)
    path = manager.save(dst_root, step, chunks, config_yaml=to_yaml(cfg))
    shapes = {n: tuple(p.shape) for n, p in chunks[0].named_parameters()}
    return {"rank": topo.rank, "tp": topo.tp_rank, "pp": topo.pp_rank, "path": str(path), "shapes": shapes}
