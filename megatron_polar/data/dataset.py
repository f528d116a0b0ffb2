"""The training-side view of built pair datasets: blending, splits, packing and data-parallel sharding.

Every step's micro-batches are a pure function of (seed, epoch, step), so the data position in a
checkpoint is just the step counter: a resumed run reads exactly the samples an uninterrupted run
would, on any data-parallel size that divides the global batch.

Units: a *sample* is a pair in the padded layout and a packed row in the packed layout;
``global_batch_size`` and ``micro_batch_size`` count samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_polar.config.loader import ConfigError
from megatron_polar.config.schema import DatasetSpec
from megatron_polar.data.batching import collate_packed, collate_padded
from megatron_polar.data.contract import PairDataset, open_pair_dataset
from megatron_polar.data.packing import pack_pairs
from megatron_polar.model.reward_model import RewardBatch
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class PairPool:
    """Pairs drawn from one or more datasets: ``(dataset, pair index)`` per entry, plus token counts."""

    datasets: list[PairDataset]
    source: np.ndarray  # [N] dataset number
    index: np.ndarray  # [N] pair index within that dataset
    lengths: np.ndarray  # [N, 2] chosen / rejected tokens

    def __len__(self) -> int:
        return len(self.source)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.datasets[self.source[i]].pair(int(self.index[i]))


def open_datasets(specs: list[DatasetSpec]) -> list[PairDataset]:
    """Open every dataset of a blend (clear errors name the missing or corrupt file)."""
    return [open_pair_dataset(spec.path) for spec in specs]


def check_tokenizers(datasets: list[PairDataset]) -> dict:
    """All datasets of a run must share one tokenizer; return its manifest entry."""
    first = datasets[0].manifest["tokenizer"]
    for ds in datasets[1:]:
        tok = ds.manifest["tokenizer"]
        if tok.get("sha256") != first.get("sha256") or tok["reward_token_id"] != first["reward_token_id"]:
            raise ConfigError(
                f"dataset {ds.prefix} was built with another tokenizer than {datasets[0].prefix}"
            )
    return first


def split_indices(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, valid) index split of ``n`` pairs."""
    perm = np.random.default_rng([seed, 7]).permutation(n)
    n_valid = int(round(n * valid_fraction))
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def blend(
    datasets: list[PairDataset], weights: list[float], subsets: list[np.ndarray], seed: int
) -> PairPool:
    """One epoch of the weighted blend: dataset ``i`` contributes ``w_i / sum(w)`` of the pairs.

    The epoch holds as many pairs as all subsets together; a dataset asked for more pairs than it has is
    repeated (whole passes, then a seeded sample), one with fewer is sampled without replacement.
    """
    total = sum(len(s) for s in subsets)
    w = np.asarray(weights, dtype=np.float64)
    want = np.floor(w / w.sum() * total).astype(np.int64)
    want[np.argmax(w)] += total - want.sum()
    rng = np.random.default_rng([seed, 11])
    sources, indices = [], []
    for d, (subset, k) in enumerate(zip(subsets, want)):
        if len(subset) == 0 or k == 0:
            continue
        reps, rest = divmod(int(k), len(subset))
        chosen = np.concatenate([np.tile(subset, reps), rng.choice(subset, rest, replace=False)])
        sources.append(np.full(len(chosen), d, dtype=np.int32))
        indices.append(chosen.astype(np.int64))
    source = np.concatenate(sources) if sources else np.zeros(0, np.int32)
    index = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    lengths = np.zeros((len(source), 2), dtype=np.int64)
    for d, ds in enumerate(datasets):
        sel = source == d
        lengths[sel] = ds.pair_lengths()[index[sel]]
    return PairPool(datasets=datasets, source=source, index=index, lengths=lengths)


class EpochPlan:
    """The order of samples in one epoch: shuffled pairs, grouped into packed rows or kept one by one."""

    def __init__(
        self, pool: PairPool, layout: str, seq_length: int, seed: int, epoch: int, window: int, shuffle: bool
    ):
        self.pool, self.layout, self.seq_length = pool, layout, seq_length
        order = np.arange(len(pool))
        if shuffle:
            order = np.random.default_rng([seed, 13, epoch]).permutation(len(pool))
        if layout == "padded":
            fits = pool.lengths[order].max(axis=1) <= seq_length
        else:
            fits = pool.lengths[order].sum(axis=1) <= seq_length
        self.dropped = int((~fits).sum())
        order = order[fits]
        self.order = order
        if layout == "packed":
            rows = pack_pairs(pool.lengths[order].sum(axis=1), seq_length, window=window)
            if shuffle:
                # Best-fit-decreasing opens rows largest pairs first: without this, each window's long
                # pairs would come early in the epoch and its short ones late.
                rows = [rows[i] for i in np.random.default_rng([seed, 17, epoch]).permutation(len(rows))]
            self.row_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
            self.row_offsets[1:] = np.cumsum([len(r) for r in rows])
            self.row_pairs = order[np.concatenate(rows)] if rows else np.zeros(0, np.int64)
        self.real_tokens = int(pool.lengths[order].sum())

    def __len__(self) -> int:
        return len(self.order) if self.layout == "padded" else len(self.row_offsets) - 1

    def sample_pairs(self, sample: int) -> np.ndarray:
        """Pool indices of the pairs in ``sample`` (one pair, or a packed row)."""
        if self.layout == "padded":
            return self.order[sample : sample + 1]
        return self.row_pairs[self.row_offsets[sample] : self.row_offsets[sample + 1]]

    @property
    def efficiency(self) -> float:
        """Real tokens over the tokens of all rows (padding included)."""
        rows = len(self) * (2 if self.layout == "padded" else 1)
        return self.real_tokens / max(1, rows * self.seq_length)


class PairBatches:
    """Micro-batches of one data-parallel rank, addressable by (step, micro-batch)."""

    def __init__(
        self,
        pool: PairPool,
        *,
        layout: str,
        seq_length: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        window: int = 2048,
        shuffle: bool = True,
        pad_id: int = 0,
        thd: bool = False,
        name: str = "train",
        global_batch_size: int | None = None,
    ):
        self.pool, self.layout, self.seq_length = pool, layout, seq_length
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.window, self.shuffle = seed, window, shuffle
        self.pad_id, self.thd, self.name = pad_id, thd, name
        self._plans: dict[int, EpochPlan] = {}
        self._epoch_steps: list[int] = []
        plan = self.plan(0)  # packed once here; the global batch size can be chosen from it afterwards
        if plan.dropped:
            log.warning(
                "%s: %d of %d pairs exceed data.seq_length=%d and are skipped",
                name,
                plan.dropped,
                len(pool),
                seq_length,
            )
        self.global_batch_size = self.num_microbatches = 0
        if global_batch_size is not None:
            self.set_global_batch_size(global_batch_size)

    def set_global_batch_size(self, global_batch_size: int) -> None:
        """Fix the samples per step (checked against the micro-batch, DP size and epoch length)."""
        unit = self.micro_batch_size * self.dp_size
        if global_batch_size % unit:
            raise ConfigError(
                f"train.global_batch_size={global_batch_size} must be a multiple of train.micro_batch_size="
                f"{self.micro_batch_size} x data-parallel size {self.dp_size}"
            )
        plan = self.plan(0)
        if len(plan) < global_batch_size:
            dropped = (
                f" ({plan.dropped} pairs longer than data.seq_length were dropped)" if plan.dropped else ""
            )
            raise ConfigError(
                f"{self.name} data has {len(plan)} {self.unit}s per epoch, fewer than "
                f"train.global_batch_size={global_batch_size}{dropped}"
            )
        self.global_batch_size = global_batch_size
        self.num_microbatches = global_batch_size // unit
        self._epoch_steps = []
        log.info(
            "%s: %d pairs -> %d %ss per epoch, %d steps per epoch, %.1f%% real tokens",
            self.name,
            len(plan.order),
            len(plan),
            self.unit,
            self.steps_per_epoch,
            100 * plan.efficiency,
        )

    @property
    def unit(self) -> str:
        return "pair" if self.layout == "padded" else "row"

    def plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            self._plans = {
                epoch: EpochPlan(
                    self.pool, self.layout, self.seq_length, self.seed, epoch, self.window, self.shuffle
                )
            }
        return self._plans[epoch]

    @property
    def steps_per_epoch(self) -> int:
        return len(self.plan(0)) // self.global_batch_size

    def pairs_per_sample(self) -> float:
        plan = self.plan(0)
        return len(plan.order) / max(1, len(plan))

    def _locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within it): epochs pack differently, so each has its own number of steps."""
        epoch, start = 0, 0
        while True:
            if epoch == len(self._epoch_steps):
                self._epoch_steps.append(len(self.plan(epoch)) // self.global_batch_size)
            if step < start + self._epoch_steps[epoch]:
                return epoch, step - start
            start += self._epoch_steps[epoch]
            epoch += 1

    def step_batches(self, step: int) -> list[RewardBatch]:
        """This rank's micro-batches of global step ``step`` (0-based), wrapping into later epochs."""
        epoch, within = self._locate(step)
        plan = self.plan(epoch)
        first = within * self.global_batch_size + self.dp_rank * self.num_microbatches * self.micro_batch_size
        batches = []
        for mb in range(self.num_microbatches):
            start = first + mb * self.micro_batch_size
            samples = [plan.sample_pairs(s) for s in range(start, start + self.micro_batch_size)]
            batches.append(self._collate(samples))
        return batches

    def _collate(self, samples: list[np.ndarray]) -> RewardBatch:
        if self.layout == "padded":
            pairs = [self.pool.pair(int(p)) for s in samples for p in s]
            return collate_padded(pairs, self.seq_length, pad_id=self.pad_id, explicit_mask=False)
        rows = [[self.pool.pair(int(p)) for p in s] for s in samples]
        return collate_packed(rows, self.seq_length, pad_id=self.pad_id, thd=self.thd)
