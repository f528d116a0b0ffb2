"""Typed configuration: schema, Hydra composition and the translation to megatron-core configs."""

from megatron_polar.config.loader import from_yaml, load_config, to_yaml
from megatron_polar.config.schema import PolarConfig
from megatron_polar.utils.errors import ConfigError

__all__ = ["ConfigError", "PolarConfig", "from_yaml", "load_config", "to_yaml"]
