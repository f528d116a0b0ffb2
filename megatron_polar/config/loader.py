"""Compose the Hydra configuration from ``conf/`` plus command-line overrides."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from megatron_polar.config.schema import PolarConfig, register_configs
from megatron_polar.config.validate import validate
from megatron_polar.utils.errors import ConfigError

CONFIG_DIR_ENV = "POLAR_CONF_DIR"


def default_config_dir() -> Path:
    """``conf/`` at the repository root, or ``$POLAR_CONF_DIR``."""
    if CONFIG_DIR_ENV in os.environ:
        return Path(os.environ[CONFIG_DIR_ENV]).resolve()
    return Path(__file__).resolve().parents[2] / "conf"


def load_config(
    overrides: Sequence[str] = (), config_dir: str | Path | None = None, config_name: str = "config"
) -> PolarConfig:
    """Compose ``config_name`` with ``overrides`` and return the typed, validated config."""
    register_configs()
    conf_dir = Path(config_dir) if config_dir else default_config_dir()
    if not (conf_dir / f"{config_name}.yaml").is_file():
        raise ConfigError(f"no {config_name}.yaml in config directory {conf_dir}")
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        obj = OmegaConf.to_object(cfg)
    except (ConfigCompositionException, OmegaConfBaseException) as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"invalid configuration: {cause}") from exc
    assert isinstance(obj, PolarConfig)
    validate(obj)
    return obj


def to_yaml(cfg: PolarConfig) -> str:
    """The resolved configuration as YAML (saved beside every run and checkpoint)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> PolarConfig:
    """Inverse of :func:`to_yaml`, checked against the schema."""
    merged = OmegaConf.merge(OmegaConf.structured(PolarConfig), OmegaConf.create(text))
    return OmegaConf.to_object(merged)
