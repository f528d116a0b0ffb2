"""Training metrics: model FLOPs, throughput, and the writers (console, metrics.jsonl, TensorBoard, wandb)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from megatron_polar.config.schema import ModelConfig
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


def model_flops(m: ModelConfig, real_tokens: int, sum_sq_lengths: int) -> float:
    """Forward+backward FLOPs of the reward model on ``real_tokens`` tokens.

    Dense matmuls cost 6 FLOPs per non-embedding parameter per token (2 forward, 4 backward). Causal
    attention adds ``QK^T`` and ``AV``: 2 x 2 x h x L^2 / 2 forward FLOPs per layer for a sequence of
    length L, times 3 for the backward. Padding is not counted: these are *model* FLOPs.
    ``sum_sq_lengths`` is twice the causal (query, key) pairs: ``L^2`` per sequence, and for a
    shared-prefix pair ``c^2 + r^2 - p^2`` (the planner's ``planning.lengths`` count), so real tokens
    and FLOPs of shared rows are what is computed, not what the unshared pair would have cost.
    """
    head_dim = m.hidden_size // m.num_attention_heads
    qkv = m.hidden_size * (m.num_attention_heads + 2 * m.num_query_groups) * head_dim
    per_layer = qkv + m.hidden_size * m.hidden_size + 3 * m.hidden_size * m.ffn_hidden_size
    dense = 6.0 * m.num_layers * per_layer * real_tokens
    attention = 6.0 * m.num_layers * m.hidden_size * sum_sq_lengths
    return dense + attention


class MetricsWriter:
    """One logging sink per run: ``metrics.jsonl`` always; TensorBoard and wandb as configured.

    Only the logging rank creates one; other ranks pass ``enabled=False`` and every call is a no-op.
    """

    def __init__(
        self,
        run_dir: str,
        enabled: bool,
        tensorboard: bool = True,
        wandb_mode: str = "disabled",
        wandb_project: str = "megatron_polar",
        wandb_name: str | None = None,
        config: dict | None = None,
        resume_step: int = 0,
    ) -> None:
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = self.run_dir / "metrics.jsonl"
        self._drop_after(resume_step)
        self._jsonl = open(self._jsonl_path, "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
            )
        if wandb_mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_DIR", str(self.run_dir))
            self._wandb = wandb.init(
                project=wandb_project,
                name=wandb_name,
                mode=wandb_mode,
                config=config,
                resume="allow",
                id=(wandb_name or self.run_dir.name).replace("/", "_"),
            )

    def _drop_after(self, step: int) -> None:
        """On resume, forget lines logged after the checkpoint so the file reads like one clean run."""
        if not self._jsonl_path.exists():
            return
        kept = []
        for line in self._jsonl_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        tmp = self._jsonl_path.with_suffix(".tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self._jsonl_path)

    def log(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": prefix, **metrics}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                if self._tb is not None:
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"{prefix}/{k}": v for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
