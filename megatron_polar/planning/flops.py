"""Training FLOPs per token and projected wall time.

Per trained token (forward 2 FLOPs per weight and multiply-add, backward twice that):

- dense: ``6 * N_matmul`` with ``N_matmul`` the weights used in matrix multiplies (the transformer's
  linear layers and the reward head; the embedding is a lookup and there is no LM output layer);
- attention scores and the weighted sum (``Q K^T`` and ``P V``): ``12 * l * h * s_attn`` per token
  for full attention (Narayanan et al., arXiv 2104.04473, eq. 3, the ``s/(6h)`` term), halved for
  causal attention because flash attention skips the masked half. ``s_attn`` is the length of the
  sequence a token attends within: the packed row length for padded rows, and the length of one
  POLAR sequence (prompt + reference + candidate) for packed rows with variable-length attention.

Each preference pair is two sequences (reference + chosen, reference + rejected), both run forward and
backward; token counts here are tokens processed, so a pair counts both sequences. Full recomputation
adds one forward pass of the recomputed layers: hardware FLOPs = model FLOPs * (1 + f/3) with ``f`` the
share of layers recomputed (1 for ``uniform``, ``k / layers per stage`` for ``block``); MFU uses model FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_polar.config.schema import ModelConfig
from megatron_polar.planning.params import count_parameters

H800_PEAK_BF16_TFLOPS = 989.0  # dense BF16, the same as H100 SXM

# The paper's pre-training runs (appendix A.1.2): preset -> (GPUs, tokens, hours).
PAPER_RUNS: dict[str, tuple[int, float, float]] = {
    "polar_7b": (912, 3.6e12, 175.0),
    "polar_1_8b": (320, 0.94e12, 57.0),
}


@dataclass(frozen=True)
class FlopsEstimate:
    """FLOPs per trained token and, where the batch is known, per optimizer step."""

    dense_per_token: float  # 6 * N_matmul
    attention_per_token: float  # 12 * l * h * s_attn (x 1/2 causal)
    recompute_factor: float  # 1 + (share of layers recomputed) / 3
    tokens_per_step: int | None

    @property
    def model_per_token(self) -> float:
        return self.dense_per_token + self.attention_per_token

    @property
    def hardware_per_token(self) -> float:
        return self.model_per_token * self.recompute_factor

    @property
    def model_per_step(self) -> float | None:
        return None if self.tokens_per_step is None else self.model_per_token * self.tokens_per_step


def estimate_flops(
    matmul_params: int,
    num_layers: int,
    hidden_size: int,
    attn_length: int,
    causal: bool = True,
    recomputed_fraction: float = 0.0,
    tokens_per_step: int | None = None,
) -> FlopsEstimate:
    """FLOPs of one trained token of a model with ``matmul_params`` weights in matrix multiplies."""
    attention = 12.0 * num_layers * hidden_size * attn_length * (0.5 if causal else 1.0)
    return FlopsEstimate(6.0 * matmul_params, attention, 1.0 + recomputed_fraction / 3.0, tokens_per_step)


def model_flops(m: ModelConfig, real_tokens: int, sum_sq_lengths: int) -> float:
    """Forward+backward model FLOPs of a measured step: ``real_tokens`` tokens in sequences whose
    squared lengths sum to ``sum_sq_lengths`` (the trainer's MFU).

    The per-token terms of :func:`estimate_flops` summed over the step's own sequences: dense
    ``6 * l * (linear weights per layer)`` per token (the reward head's ``h`` weights are left out here),
    and causal attention ``12 * l * h * L / 2`` per token of a length-``L`` sequence, which sums to
    ``6 * l * h * sum(L^2)``. Padding is not counted: these are *model* FLOPs.
    """
    per_layer = count_parameters(m).layer_linear
    dense = 6.0 * m.num_layers * per_layer * real_tokens
    attention = 6.0 * m.num_layers * m.hidden_size * sum_sq_lengths
    return dense + attention


def projected_seconds(
    tokens: float, flops_per_token: float, gpus: int, mfu: float, peak_tflops: float
) -> float:
    """Wall seconds to train ``tokens`` at ``mfu`` of ``peak_tflops`` on each of ``gpus``."""
    return tokens * flops_per_token / (gpus * peak_tflops * 1e12 * mfu)


def implied_mfu(tokens: float, flops_per_token: float, gpus: int, hours: float, peak_tflops: float) -> float:
    """MFU that a run of ``tokens`` on ``gpus`` in ``hours`` achieved under this FLOP count."""
    return tokens * flops_per_token / (gpus * peak_tflops * 1e12 * hours * 3600.0)
