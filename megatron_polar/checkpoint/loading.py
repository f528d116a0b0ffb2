"""Load a megatron_polar checkpoint, saved at any TP/PP layout, into a one-process model.

The model layer builds a world of one (``model/standalone.py``); this module reads the checkpoint's
saved config and weights into it, so that ``model/`` never imports ``checkpoint/``.
"""

from __future__ import annotations

from megatron_polar.checkpoint import manager
from megatron_polar.config import from_yaml
from megatron_polar.config.schema import PolarConfig
from megatron_polar.model.reward_model import PolarRewardModel
from megatron_polar.model.standalone import build_single, single_process_config, with_transformer_impl


def load_checkpoint_model(
    path: str, precision: str | None = "fp32", device: str = "auto", transformer_impl: str | None = None
) -> tuple[PolarConfig, PolarRewardModel]:
    """The config and the full model of a megatron_polar checkpoint (any saved layout), in eval mode.

    ``transformer_impl`` overrides the saved ``model.transformer_impl`` (see :func:`with_transformer_impl`).
    """
    ckpt = manager.resolve(path)
    cfg = single_process_config(from_yaml(manager.read_config_yaml(ckpt)), precision)
    cfg = with_transformer_impl(cfg, transformer_impl)
    model = build_single(cfg, device)
    manager.load(ckpt, [model])
    model.eval()
    return cfg, model
