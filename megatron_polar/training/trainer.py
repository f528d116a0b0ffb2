"""The POLAR training loop: pre-training and fine-tuning share it, only the data and the start differ."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_polar.checkpoint import manager
from megatron_polar.config import from_yaml, to_yaml
from megatron_polar.config.model_shape import WEIGHT_KEYS, model_differences
from megatron_polar.config.schema import PolarConfig
from megatron_polar.config.validate import validate_fp8_hardware
from megatron_polar.data.prefetch import BatchPrefetcher
from megatron_polar.data.sampler import PairBatches
from megatron_polar.model.builder import build_model_chunks, resolve_use_te
from megatron_polar.parallel import comm, topology
from megatron_polar.planning.flops import model_flops
from megatron_polar.training.forward_step import forward_backward
from megatron_polar.training.optim import build_scheduler, current_lr, guarded_step
from megatron_polar.training.resolve import resolve_hparams, resolve_tokens, with_hparams
from megatron_polar.training.run_data import batch_options, build_valid_batches, open_pools
from megatron_polar.training.setup import apply_determinism_env, build_optimizer, force_param_sync, wrap_ddp
from megatron_polar.training.signals import ExitSignal
from megatron_polar.utils.errors import ConfigError
from megatron_polar.utils.logging import get_logger
from megatron_polar.utils.metrics import MetricsWriter

log = get_logger(__name__)


@dataclass
class TrainResult:
    """How a run ended (returned on every rank)."""

    step: int
    reason: str  # finished | signal | exit_after_iters | nan
    last_checkpoint: str | None
    valid: dict | None


class Trainer:
    """Owns the model, optimizer, data and writers of one run; :meth:`fit` runs it."""

    def __init__(self, cfg: PolarConfig):
        apply_determinism_env(cfg)
        self.topo = topology.initialize(cfg.parallel, cfg.train.seed)
        if self.topo.device.type == "cuda":
            validate_fp8_hardware(cfg, torch.cuda.get_device_capability())
        train_pool, valid_pool, tokenizer = open_pools(cfg)
        cfg = resolve_tokens(cfg, tokenizer)
        self.use_te = resolve_use_te(cfg)
        unit = cfg.train.micro_batch_size * self.topo.dp_size
        options = batch_options(cfg, self.topo, self.use_te)
        self.train_data = PairBatches(train_pool, **options, name="train")
        self.lr, gbs = resolve_hparams(cfg, self.train_data.pairs_per_sample(), unit)
        cfg = with_hparams(cfg, self.lr, gbs)
        self.cfg = cfg
        self.train_data.set_global_batch_size(gbs)
        self.valid_data = build_valid_batches(valid_pool, options, gbs, unit)
        self.train_iters = cfg.train.train_iters or self.train_data.steps_per_epoch
        # Its worker thread starts with the first prefetch; fit() stops it however training ends.
        self._batches = BatchPrefetcher(self.train_data, enabled=cfg.data.prefetch, end=self.train_iters)
        self.chunks = build_model_chunks(cfg, use_te=self.use_te)
        self.model = wrap_ddp(cfg, self.chunks)
        self.optimizer = build_optimizer(cfg, self.model, self.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.lr, self.train_iters)
        self.run_dir = Path(cfg.logging.run_dir)
        self.ckpt_dir = Path(cfg.checkpoint.dir or self.run_dir / "checkpoints")
        self.step = self._restore()
        self.writer = MetricsWriter(
            str(self.run_dir),
            enabled=self.topo.is_logging_rank,
            tensorboard=cfg.logging.tensorboard,
            wandb_mode=cfg.logging.wandb_mode,
            wandb_project=cfg.logging.wandb_project,
            wandb_name=cfg.logging.wandb_name,
            resume_step=self.step,
        )
        if self.topo.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))

    # ----------------------------------------------------------------------------------------- state
    def _check_same_model(self, path) -> None:
        """Refuse weights of another shape *or* another RoPE/norm setting (those load but compute garbage)."""
        saved = from_yaml(manager.read_config_yaml(path)).model
        diff = model_differences(saved, self.cfg.model, WEIGHT_KEYS)
        if diff:
            raise ConfigError(f"checkpoint {path} does not match the model config: " + "; ".join(diff))

    def _restore(self) -> int:
        ck = self.cfg.checkpoint
        latest = manager.latest_complete(self.ckpt_dir) if ck.resume else None
        if latest is not None:
            self._check_same_model(latest)
            state = manager.load(latest, self.model, self.optimizer if ck.save_optimizer else None)
            if "scheduler" in state:
                self.scheduler.load_state_dict(state["scheduler"])
            log.info("resumed from %s at step %d", latest, state["step"])
            return int(state["step"])
        if ck.pretrained:
            self._check_same_model(manager.resolve(ck.pretrained))
            manager.load(ck.pretrained, self.model)  # weights only: fresh optimizer and schedule
            self.optimizer.reload_model_params()
            log.info("initialised weights from %s", ck.pretrained)
        return 0

    def save(self) -> str:
        ck = self.cfg.checkpoint
        force_param_sync(self.cfg, self.model)  # with overlap_param_gather, other ranks' shards lag a step
        path = manager.save(
            self.ckpt_dir,
            self.step,
            self.model,
            optimizer=self.optimizer if ck.save_optimizer else None,
            train_state={
                "scheduler": self.scheduler.state_dict(),
                "consumed_samples": self.step * self.cfg.train.global_batch_size,
                "stage": self.cfg.train.stage,
            },
            config_yaml=to_yaml(self.cfg),
            keep_last=ck.keep_last,
        )
        return str(path)

    # ------------------------------------------------------------------------------------------ loop
    def _tokens(self, batches) -> tuple[float, float]:
        """Tokens processed (a shared prefix once per pair) and the attention term of the step's FLOPs,
        summed over data-parallel ranks. With shared prefixes the collator counts ``c^2 + r^2 - p^2``
        per pair, the planner's shared attention (``planning.lengths``), so both use one formula."""
        t = torch.tensor(
            [sum(b.num_real_tokens for b in batches), sum(b.sum_sq_lengths for b in batches)],
            dtype=torch.float64,
        )
        t = t.to(self.topo.device)
        comm.sum_over_data_parallel(t)
        return float(t[0]), float(t[1])

    def train_step(self) -> dict:
        batches = self._batches.get(self.step)
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()
        t0 = time.perf_counter()
        result = forward_backward(self.model, batches, self.topo.device)
        lr = current_lr(self.optimizer)  # the rate this step's update uses
        applied, grad_norm = guarded_step(self.optimizer, self.cfg.optim.clip_grad, result.finite)
        if applied:
            self.scheduler.step(increment=1)
        elapsed = time.perf_counter() - t0
        tokens, sq = self._tokens(batches)
        pairs_per_step = self.train_data.step_pairs(self.step)
        flops = model_flops(self.cfg.model, int(tokens), int(sq))
        extra = {}
        if self.cfg.train.precision == "fp16":
            extra["loss_scale"] = float(self.optimizer.get_loss_scale())
        return {
            **result.metrics,
            **extra,
            "lr": lr,
            "grad_norm": grad_norm,
            "pairs": result.pairs,
            "skipped": int(not applied),
            "tokens_per_s": tokens / elapsed,  # processed tokens: a shared prefix counts once
            "pairs_per_s": pairs_per_step / elapsed,
            "tokens_per_step": tokens,
            "tflops_per_device": flops / elapsed / self.topo.world_size / 1e12,
            "step_time_s": elapsed,
            "batch_wait_s": self._batches.last_wait_s,  # host time the step waited for its batches
            "batch_build_s": self._batches.last_build_s,  # host time building them took (overlapped)
            "pairs_per_step": pairs_per_step,
        }

    def evaluate(self) -> dict | None:
        """Validation loss and pair accuracy over the validation set (or ``eval_iters`` batches)."""
        if self.valid_data is None:
            return None
        for m in self.model:
            m.eval()
        steps = self.valid_data.steps_per_epoch
        if self.cfg.train.eval_iters:
            steps = min(steps, self.cfg.train.eval_iters)
        sums, pairs = {}, 0
        with torch.no_grad():
            for s in range(steps):
                result = forward_backward(
                    self.model, self.valid_data.step_batches(s), self.topo.device, forward_only=True
                )
                for k, v in result.metrics.items():
                    sums[k] = sums.get(k, 0.0) + v * result.pairs
                pairs += result.pairs
        for m in self.model:
            m.train()
        metrics = {k: v / max(pairs, 1) for k, v in sums.items()}
        metrics["pairs"] = pairs
        return metrics

    def fit(self) -> TrainResult:
        cfg, signals = self.cfg, ExitSignal()
        reason, last_ckpt, valid = "finished", None, None
        log.info(
            "training %s from step %d to %d (%d samples per step, lr %.3g)",
            cfg.train.stage,
            self.step,
            self.train_iters,
            cfg.train.global_batch_size,
            self.lr,
        )
        try:
            while self.step < self.train_iters:
                metrics = self.train_step()
                self.step += 1
                if metrics["skipped"] and cfg.train.precision == "fp16" and math.isfinite(metrics["loss"]):
                    # Dynamic loss scaling: an overflowing gradient skips the update and lowers the
                    # scale, as in Megatron's loop; a normal event while the scale settles, not a NaN.
                    log.info(
                        "step %d: fp16 gradient overflow, update skipped; loss scale now %g",
                        self.step,
                        metrics["loss_scale"],
                    )
                elif metrics["skipped"]:
                    log.warning(
                        "step %d: non-finite loss or gradient (loss %s, grad norm %s)",
                        self.step,
                        metrics["loss"],
                        metrics["grad_norm"],
                    )
                    if cfg.train.nan_policy == "stop":
                        reason = "nan"
                        raise FloatingPointError(
                            f"non-finite loss/gradient at step {self.step}; train.nan_policy=stop (use skip to drop such steps)"
                        )
                self.writer.log(self.step, metrics)
                if self.step % cfg.logging.log_interval == 0 or self.step == 1:
                    log.info(
                        "step %d | loss %.4f | acc %.3f | margin %.3f | lr %.3g | grad %.3f | %.0f tok/s "
                        "| %.1f pairs/s | %.3f TFLOP/s/dev",
                        self.step,
                        metrics["loss"],
                        metrics["accuracy"],
                        metrics["margin"],
                        metrics["lr"],
                        metrics["grad_norm"],
                        metrics["tokens_per_s"],
                        metrics["pairs_per_s"],
                        metrics["tflops_per_device"],
                    )
                done = self.step >= self.train_iters
                if cfg.train.eval_interval and self.step % cfg.train.eval_interval == 0 and not done:
                    valid = self._log_valid()
                stop = signals.should_exit()
                limit = cfg.train.exit_after_iters is not None and self.step >= cfg.train.exit_after_iters
                if (
                    done
                    or stop
                    or limit
                    or (cfg.checkpoint.save_interval and self.step % cfg.checkpoint.save_interval == 0)
                ):
                    last_ckpt = self.save()
                if stop or (limit and not done):
                    reason = "signal" if stop else "exit_after_iters"
                    break
            if reason == "finished":
                valid = self._log_valid()
        finally:
            self._batches.close()
            signals.restore()
            self.writer.close()
        log.info("stopped at step %d (%s)", self.step, reason)
        return TrainResult(step=self.step, reason=reason, last_checkpoint=last_ckpt, valid=valid)

    def _log_valid(self) -> dict | None:
        valid = self.evaluate()
        if valid is not None:
            self.writer.log(self.step, valid, prefix="valid")
            log.info(
                "step %d | valid loss %.4f | valid acc %.3f | %d pairs",
                self.step,
                valid["loss"],
                valid["accuracy"],
                valid["pairs"],
            )
        return valid


def train(cfg: PolarConfig) -> TrainResult:
    """Build everything from ``cfg`` and train; checkpoints and logs go under ``cfg.logging.run_dir``."""
    return Trainer(cfg).fit()
