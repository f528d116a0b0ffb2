"""``python -m megatron_polar.train [hydra overrides...]``: pre-train or fine-tune a POLAR reward model.

Runs as one process or under torchrun/srun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from the
launcher). Examples::

    python -m megatron_polar.train model=tiny 'data.train=[{path: data/train}]' train.train_iters=100
    torchrun --nproc-per-node 8 -m megatron_polar.train model=polar_7b parallel=h800_7b stage=pretrain ...
"""

from __future__ import annotations

import sys

from megatron_polar.config import ConfigError, load_config, to_yaml
from megatron_polar.utils.errors import CheckpointError, DatasetError
from megatron_polar.utils.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        print(
            "Config groups: model, parallel, data, optim, stage, checkpoint, logging (see conf/ and README)."
        )
        return 0
    print_cfg = "--cfg" in args
    overrides = [a for a in args if a != "--cfg"]
    try:
        cfg = load_config(overrides)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if print_cfg:
        print(to_yaml(cfg))
        return 0
    setup_logging(cfg.logging.level)
    import warnings

    import torch

    if not torch.cuda.is_available():
        # Without a GPU the local spec is the plan, so megatron-core's import-time notes that TE and apex
        # are missing are noise. On a GPU they stay visible (and the model builder stops with the TE
        # import error unless model.transformer_impl=local).
        warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex) (is|are) not installed.*")
    # megatron-core is imported only here, after the filter above (its notices fire at import time);
    # --help and --cfg never pay for it. The contract test lists these two imports as its exceptions.
    from megatron_polar.parallel import topology
    from megatron_polar.training.trainer import train

    try:
        result = train(cfg)
    except (ConfigError, DatasetError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        topology.destroy()
    return 0 if result.reason in ("finished", "signal", "exit_after_iters") else 1


if __name__ == "__main__":
    sys.exit(main())
