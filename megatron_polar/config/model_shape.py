"""Which ``model.*`` keys make two reward models interchangeable: the one list of them.

Three places ask the question and read the answer here: the trainer refusing a checkpoint of another
model (:data:`WEIGHT_KEYS`), the HF weight layouts sizing every tensor (:data:`TRUNK_SHAPE_KEYS`, the
fields of ``checkpoint.hf_layouts.TrunkShape`` in this order), and ``convert import-hf`` printing the
overrides that make a training run build the imported model (:data:`HF_CONFIG_KEYS`).
"""

from __future__ import annotations

from megatron_polar.config.schema import ModelConfig

# The dimensions that decide every tensor shape of the trunk.
TRUNK_SHAPE_KEYS: tuple[str, ...] = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "ffn_hidden_size",
    "vocab_size",
)

# Settings that change no shape, so weights load under any value, but change what the weights compute.
NUMERICS_KEYS: tuple[str, ...] = ("rotary_base", "norm_epsilon")

# A checkpoint's weights are only meaningful in a model that agrees on all of these.
WEIGHT_KEYS: tuple[str, ...] = TRUNK_SHAPE_KEYS + NUMERICS_KEYS

# Everything an HF config.json tells about the model: the weight keys, the context length and the
# special tokens (in the order ``convert import-hf`` prints them).
HF_CONFIG_KEYS: tuple[str, ...] = (
    *TRUNK_SHAPE_KEYS,
    "max_position_embeddings",
    *NUMERICS_KEYS,
    "reward_token_id",
    "split_token_id",
)


def model_differences(
    saved: ModelConfig, current: ModelConfig, keys: tuple[str, ...] = WEIGHT_KEYS
) -> list[str]:
    """One ``model.<key>: checkpoint <saved> vs config <current>`` line per key on which they differ."""
    return [
        f"model.{k}: checkpoint {getattr(saved, k)} vs config {getattr(current, k)}"
        for k in keys
        if getattr(saved, k) != getattr(current, k)
    ]
