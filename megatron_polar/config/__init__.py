"""Typed configuration: schema, Hydra composition and the translation to megatron-core configs."""

from megatron_polar.config.loader import ConfigError, from_yaml, load_config, to_yaml
from megatron_polar.config.schema import PolarConfig

__all__ = ["ConfigError", "PolarConfig", "from_yaml", "load_config", "to_yaml"]
