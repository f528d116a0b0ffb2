"""megatron_polar: pre-train and fine-tune POLAR reward models on megatron-core."""

__version__ = "0.1.0"
