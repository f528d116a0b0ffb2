"""The POLAR training loop: pre-training and fine-tuning share it, only the data and the start differ."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_polar.checkpoint import manager
from megatron_polar.config import from_yaml, to_yaml
from megatron_polar.config.hparams import require_law_inputs, scaling_law_batch_size, scaling_law_lr
from megatron_polar.config.loader import ConfigError
from megatron_polar.config.schema import PolarConfig
from megatron_polar.config.validate import validate_fp8_hardware
from megatron_polar.data.dataset import PairBatches, PoolRecipe, check_tokenizers, open_datasets, pool_recipes
from megatron_polar.data.plan_store import PlanStore
from megatron_polar.data.prefetch import BatchPrefetcher
from megatron_polar.model.builder import build_model_chunks, count_parameters, resolve_use_te
from megatron_polar.parallel import topology
from megatron_polar.training.forward_step import forward_backward
from megatron_polar.training.optim import build_scheduler, current_lr, guarded_step
from megatron_polar.training.setup import apply_determinism_env, build_optimizer, force_param_sync, wrap_ddp
from megatron_polar.training.signals import ExitSignal
from megatron_polar.utils.logging import get_logger
from megatron_polar.utils.metrics import MetricsWriter, model_flops

log = get_logger(__name__)


@dataclass
class TrainResult:
    """How a run ended (returned on every rank)."""

    step: int
    reason: str  # finished | signal | exit_after_iters | nan
    last_checkpoint: str | None
    valid: dict | None


def _pools(cfg: PolarConfig) -> tuple[PoolRecipe, PoolRecipe | None, dict]:
    """Open the datasets (mmap, no token reads) and describe the pools; drawing them is the plan writer's job."""
    if not cfg.data.train:
        raise ConfigError("data.train is empty: pass 'data.train=[{path: <prefix>, weight: 1.0}]'")
    shared = cfg.data.share_prefix  # every dataset must then carry its shared-prefix sidecar
    train_sets = open_datasets(cfg.data.train, shared)
    valid_sets = open_datasets(cfg.data.valid, shared) if cfg.data.valid else []
    tokenizer = check_tokenizers(train_sets + valid_sets)
    train, valid = pool_recipes(cfg.data, train_sets, valid_sets)
    return train, valid, tokenizer


def resolve_tokens(cfg: PolarConfig, tokenizer: dict) -> PolarConfig:
    """Fill the special-token ids from the data and check they agree with the model config."""
    m = cfg.model
    for key in ("reward_token_id", "split_token_id"):
        data_id = tokenizer.get(key)
        if getattr(m, key) is None:
            m = replace(m, **{key: data_id})
        elif data_id is not None and getattr(m, key) != data_id:
            raise ConfigError(f"model.{key}={getattr(m, key)} but the dataset was built with {data_id}")
    if tokenizer.get("vocab_size", 0) > m.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer['vocab_size']} ids but model.vocab_size={m.vocab_size}"
        )
    return replace(cfg, model=m)


def resolve_hparams(cfg: PolarConfig, pairs_per_sample: float, unit_multiple: int) -> tuple[float, int]:
    """Peak lr and global batch (in samples), computing "auto" values from the paper's laws."""
    n = count_parameters(cfg)
    lr, gbs = cfg.optim.lr, cfg.train.global_batch_size
    if lr == "auto" or gbs == "auto":
        require_law_inputs(cfg.model.base_model_tokens, cfg.train.rm_tokens, need_dp=lr == "auto")
    if lr == "auto":
        lr = scaling_law_lr(n, cfg.model.base_model_tokens, cfg.train.rm_tokens)
        log.info(
            "optim.lr=auto -> %.3g (N=%.3g, Dp=%.3g, Drm=%.3g)",
            lr,
            n,
            cfg.model.base_model_tokens,
            cfg.train.rm_tokens,
        )
    if gbs == "auto":
        pairs = scaling_law_batch_size(n, cfg.train.rm_tokens)
        gbs = round_batch(pairs / pairs_per_sample, unit_multiple)
        got = gbs * pairs_per_sample
        log.info(
            "train.global_batch_size=auto -> law %d pairs -> %d samples (nearest multiple of %d) x %.2f "
            "pairs per sample = %.0f pairs per step (%+.1f%%)",
            round(pairs),
            gbs,
            unit_multiple,
            pairs_per_sample,
            got,
            100 * (got / pairs - 1),
        )
    return float(lr), int(gbs)


def round_batch(samples: float, unit_multiple: int) -> int:
    """The multiple of ``unit_multiple`` nearest to ``samples`` (at least one), so "auto" stays as close
    to the scaling law as the data-parallel layout allows (rounding up added 32% at 7B on 912 GPUs)."""
    return max(unit_multiple, int(math.floor(samples / unit_multiple + 0.5)) * unit_multiple)


class Trainer:
    """Owns the model, optimizer, data and writers of one run; :meth:`fit` runs it."""

    def __init__(self, cfg: PolarConfig):
        apply_determinism_env(cfg)
        self.topo = topology.initialize(cfg.parallel, cfg.train.seed)
        if self.topo.device.type == "cuda":
            validate_fp8_hardware(cfg, torch.cuda.get_device_capability())
        train_pool, valid_pool, tokenizer = _pools(cfg)
        cfg = resolve_tokens(cfg, tokenizer)
        self.use_te = resolve_use_te(cfg)
        thd = self.use_te and cfg.data.layout == "packed"
        unit = cfg.train.micro_batch_size * self.topo.dp_size
        common = dict(
            layout=cfg.data.layout,
            seq_length=cfg.data.seq_length,
            micro_batch_size=cfg.train.micro_batch_size,
            dp_rank=self.topo.dp_rank,
            dp_size=self.topo.dp_size,
            seed=cfg.data.seed,
            window=cfg.data.pack_window,
            pad_id=0,
            thd=thd,
            share_prefix=cfg.data.share_prefix,
            store=PlanStore(
                cfg.data.plan_dir or Path(cfg.logging.run_dir) / "plans",
                is_writer=self.topo.rank == 0,
                barrier=dist.barrier,
            ),
        )
        self.train_data = PairBatches(train_pool, **common, name="train")
        self.lr, gbs = resolve_hparams(cfg, self.train_data.pairs_per_sample(), unit)
        cfg = replace(
            cfg, train=replace(cfg.train, global_batch_size=gbs), optim=replace(cfg.optim, lr=self.lr)
        )
        self.cfg = cfg
        self.train_data.set_global_batch_size(gbs)
        self.valid_data = None
        if valid_pool is not None:  # pool_recipes returns None when there is no validation data
            self.valid_data = PairBatches(valid_pool, **common, shuffle=False, name="valid")
            samples = len(self.valid_data.plan(0))
            if samples:
                self.valid_data.set_global_batch_size(max(unit, min(gbs, samples // unit * unit)))
            else:
                self.valid_data = None
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
    _SHAPE_KEYS = (
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "num_query_groups",
        "ffn_hidden_size",
        "vocab_size",
        "rotary_base",
        "norm_epsilon",
    )

    def _check_same_model(self, path) -> None:
        """Refuse weights of another shape *or* another RoPE/norm setting (those load but compute garbage)."""
        saved = from_yaml(manager.read_config_yaml(path)).model
        diff = [
            f"model.{k}: checkpoint {getattr(saved, k)} vs config {getattr(self.cfg.model, k)}"
            for k in self._SHAPE_KEYS
            if getattr(saved, k) != getattr(self.cfg.model, k)
        ]
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
        dist.all_reduce(t, group=ps.get_data_parallel_group())
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
