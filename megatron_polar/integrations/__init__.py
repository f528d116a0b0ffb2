"""Adapters that plug a megatron_polar reward server into RL trainers (verl)."""
