"""Configuration of a POLAR reward model in the InternLM2 layout (written by megatron_polar).

Field names and meanings follow the released InternLM2 / POLAR ``config.json`` so that the engines that
read those checkpoints (vLLM, SGLang, lmdeploy) read ours.
"""

try:  # transformers >= 5 renamed the base class; 4.x has only this name
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:  # pragma: no cover - transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig


class InternLM2Config(_BaseConfig):
    """Shape and special tokens of an InternLM2 trunk with a POLAR reward head.

    ``rope_scaling`` is ``{"type": "dynamic", "factor": f}`` (NTK-aware scaling that only changes RoPE
    past ``max_position_embeddings``) or None. ``reward_token_id`` is the token appended to every
    sequence, whose final hidden state the head scores; ``split_token_id`` separates the reference half
    from the candidate half.
    """

    model_type = "internlm2"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 92544,
        hidden_size: int = 4096,
        intermediate_size: int = 14336,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 8,
        hidden_act: str = "silu",
        max_position_embeddings: int = 262144,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-5,
        use_cache: bool = False,
        pad_token_id: int | None = 2,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        pretraining_tp: int = 1,
        tie_word_embeddings: bool = False,
        bias: bool = False,
        rope_theta: float = 50000000.0,
        rope_scaling: dict | None = None,
        reward_token_id: int | None = 92527,
        split_token_id: int | None = None,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.pretraining_tp = pretraining_tp
        self.bias = bias
        self.rope_theta = rope_theta
        self.rope_scaling = rope_scaling
        self.reward_token_id = reward_token_id
        self.split_token_id = split_token_id
        self._check_rope_scaling()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    def _check_rope_scaling(self) -> None:
        scaling = self.rope_scaling
        if scaling is None:
            return
        kind = scaling.get("type", scaling.get("rope_type")) if isinstance(scaling, dict) else None
        if kind not in ("dynamic", "default"):
            raise ValueError(
                f"rope_scaling must be null or {{'type': 'dynamic', 'factor': f}}, got {scaling}"
            )
        factor = scaling.get("factor", 1.0)
        if kind == "dynamic" and (not isinstance(factor, (int, float)) or factor < 1.0):
            raise ValueError(f"rope_scaling.factor must be a number >= 1, got {factor!r}")
