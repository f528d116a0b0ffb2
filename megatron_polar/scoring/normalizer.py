"""Reward normalisation: standardise raw rewards with a calibration set's mean and standard deviation.

RL trainers are steadier when rewards have a stable scale; POLAR's raw rewards drift between checkpoints
and between prompts. ``calibrate`` a scorer on a set of representative triples once, save the JSON, and
serve or score with it: ``normalized = (raw - mean) / std``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from megatron_polar.utils.io import write_json_atomic

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RewardNormalizer:
    """Affine standardisation of rewards.

    Attributes:
        mean: mean raw reward over the calibration set.
        std: standard deviation of the raw rewards (population), floored at ``eps``.
        count: number of rewards it was fitted on.
        model: name or path of the model it was fitted for (informational).
    """

    mean: float
    std: float
    count: int = 0
    model: str = ""

    @classmethod
    def fit(cls, rewards: Sequence[float], model: str = "", eps: float = 1e-6) -> RewardNormalizer:
        """Mean and standard deviation of ``rewards`` (at least two values)."""
        if len(rewards) < 2:
            raise ValueError(f"calibration needs at least 2 rewards, got {len(rewards)}")
        mean = math.fsum(rewards) / len(rewards)
        var = math.fsum((r - mean) ** 2 for r in rewards) / len(rewards)
        return cls(mean=mean, std=max(math.sqrt(var), eps), count=len(rewards), model=model)

    def apply(self, reward: float) -> float:
        """Standardise one raw reward."""
        return (reward - self.mean) / self.std

    def save(self, path: str | os.PathLike) -> None:
        """Write the normaliser as JSON (atomically)."""
        write_json_atomic(path, {"version": FORMAT_VERSION, **asdict(self)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> RewardNormalizer:
        """Read a normaliser written by :meth:`save`; raises ``ValueError`` naming a bad file."""
        try:
            data = json.loads(Path(path).read_text())
            norm = cls(
                mean=float(data["mean"]),
                std=float(data["std"]),
                count=int(data.get("count", 0)),
                model=str(data.get("model", "")),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a reward normaliser JSON ({exc})") from exc
        if not (math.isfinite(norm.mean) and math.isfinite(norm.std) and norm.std > 0):
            raise ValueError(f"{path}: mean must be finite and std finite and > 0, got {norm}")
        return norm
