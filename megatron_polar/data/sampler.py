"""The training-side view of built pair datasets: blending, splits, packing and data-parallel sharding.

Every step's micro-batches are a pure function of (seed, epoch, step), so the data position in a
checkpoint is just the step counter: a resumed run reads exactly the samples an uninterrupted run
would, on any data-parallel size that divides the global batch.

Units: a *sample* is a pair in the padded layout and a packed row in the packed layout;
``global_batch_size`` and ``micro_batch_size`` count samples. With ``data.share_prefix`` every pair is
one segment group ``prefix | chosen suffix | rejected suffix`` sized by its footprint
``chosen + rejected - prefix`` (the prefix lengths come from the datasets' sidecars, not the tokens),
so a padded sample is one row instead of two.

At scale the epoch's order and packing (its *plan*) is computed once by one rank and shared through a
:class:`~megatron_polar.data.plan_store.PlanStore`; the other ranks never draw the blend at all
(:class:`PoolRecipe` describes it without drawing it), so their start-up time and memory do not grow
with the number of pairs beyond the pages of the plan they read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256

import numpy as np

from megatron_polar.config.schema import DataConfig, DatasetSpec
from megatron_polar.data.batch import RewardBatch
from megatron_polar.data.batching import collate_packed, collate_padded, collate_shared
from megatron_polar.data.epoch_plan import EpochPlan, compute_epoch_plan
from megatron_polar.data.packing import DEFAULT_WINDOW
from megatron_polar.data.pair_dataset import PairDataset, bin_path, idx_path, manifest_path, open_pair_dataset
from megatron_polar.data.plan_store import PlanStore, PlanWriter
from megatron_polar.utils.errors import ConfigError
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

_GATHER_CHUNK = 1 << 22


@dataclass
class PairPool:
    """Pairs drawn from one or more datasets: ``(dataset, pair index)`` per entry, plus token counts."""

    datasets: list[PairDataset]
    source: np.ndarray  # [N] dataset number
    index: np.ndarray  # [N] pair index within that dataset
    lengths: np.ndarray  # [N, 2] chosen / rejected tokens
    prefix: np.ndarray | None = None  # [N] shared-prefix tokens (drawn for data.share_prefix only)

    def __len__(self) -> int:
        return len(self.source)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.datasets[self.source[i]].pair(int(self.index[i]))


def open_datasets(specs: list[DatasetSpec], share_prefix: bool = False) -> list[PairDataset]:
    """Open every dataset of a blend (clear errors name the missing or corrupt file).

    With ``share_prefix`` every dataset must carry its shared-prefix sidecar; a dataset built before it
    existed fails here, at start-up, naming the file and the ``data_tools`` command that adds it.
    """
    datasets = [open_pair_dataset(spec.path) for spec in specs]
    if share_prefix:
        for ds in datasets:
            ds.prefix_lengths()  # mapped and checked, not read
    return datasets


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
    dtype = _subset_dtype(n)
    return np.sort(perm[n_valid:]).astype(dtype), np.sort(perm[:n_valid]).astype(dtype)


def _subset_dtype(n: int) -> np.dtype:
    """uint32 pair indices below 4G pairs: half the plan writer's memory for a subset."""
    return np.dtype(np.uint32) if n < 2**32 else np.dtype(np.int64)


def blend(
    datasets: list[PairDataset],
    weights: list[float],
    subsets: list[np.ndarray],
    seed: int,
    share_prefix: bool = False,
) -> PairPool:
    """One epoch of the weighted blend: dataset ``i`` contributes ``w_i / sum(w)`` of the pairs.

    The epoch holds as many pairs as all subsets together; a dataset asked for more pairs than it has is
    repeated (whole passes, then a seeded sample), one with fewer is sampled without replacement. With
    ``share_prefix`` the pool also carries every pair's shared-prefix length, from the sidecars.
    """
    total = sum(len(s) for s in subsets)
    w = np.asarray(weights, dtype=np.float64)
    want = np.floor(w / w.sum() * total).astype(np.int64)
    want[np.argmax(w)] += total - want.sum()
    rng = np.random.default_rng([seed, 11])
    # Small dtypes: only the plan writer draws a pool, but at 351M pairs each byte per pair is 351 MB.
    src_dtype = np.uint8 if len(datasets) <= 255 else np.int32
    idx_dtype = np.uint32 if max((len(ds) for ds in datasets), default=0) < 2**32 else np.int64
    spans = [d for d, (subset, k) in enumerate(zip(subsets, want)) if len(subset) and k]
    n = int(sum(want[d] for d in spans))
    # Filled in place, span by span: whole passes over the subset, then a seeded sample of it (no
    # epoch-sized int64 temporaries: at 351M pairs each one is 2.8 GB on the plan writer).
    source = np.empty(n, dtype=src_dtype)
    index = np.empty(n, dtype=idx_dtype)
    start = 0
    for d in spans:
        subset, k = subsets[d], int(want[d])
        reps, rest = divmod(k, len(subset))
        for r in range(reps):
            index[start + r * len(subset) : start + (r + 1) * len(subset)] = subset
        index[start + reps * len(subset) : start + k] = rng.choice(subset, rest, replace=False)
        source[start : start + k] = d
        start += k
    lengths = np.zeros((len(source), 2), dtype=np.int32)  # int32: half the builder's memory at scale
    prefix = np.zeros(len(source), dtype=np.int32) if share_prefix else None
    start = 0
    for d in spans:  # each dataset's entries are one contiguous span of the pool
        end = start + int(want[d])
        ds = datasets[d]  # a built dataset's index is gathered from where it is mapped, not copied
        table = ds.pair_lengths(copy=False) if isinstance(ds, PairDataset) else ds.pair_lengths()
        shared = ds.prefix_lengths() if share_prefix else None
        for lo in range(start, end, _GATHER_CHUNK):  # bounded temporaries
            hi = min(end, lo + _GATHER_CHUNK)
            lengths[lo:hi] = table[index[lo:hi]]
            if shared is not None:
                prefix[lo:hi] = shared[index[lo:hi]]
        del table, shared  # before the next dataset's tables are read
        start = end
    return PairPool(datasets=datasets, source=source, index=index, lengths=lengths, prefix=prefix)


def pair_offsets(datasets: list) -> np.ndarray:
    """``[0, n0, n0 + n1, ...]``: a *global pair id* is ``offsets[d] + index`` of pair ``index`` of dataset ``d``."""
    return np.concatenate([[0], np.cumsum([len(ds) for ds in datasets])]).astype(np.int64)


def dataset_fingerprint(ds) -> str:
    """What a plan built from ``ds`` depends on: its manifest, file sizes and the ends of its index.

    Cheap at any size (the manifest is written last by every build and records its counts and
    statistics; the index's first and last 64 KiB cover its header and last entries), so a dataset
    rebuilt or replaced in place makes older plans stale. Objects other than built datasets (synthetic
    length tables) provide ``fingerprint`` themselves.
    """
    own = getattr(ds, "fingerprint", None)
    if own is not None:
        return str(own() if callable(own) else own)
    h = sha256()
    with open(manifest_path(ds.prefix), "rb") as f:
        h.update(f.read())
    for path in (idx_path(ds.prefix), bin_path(ds.prefix)):
        h.update(str(os.path.getsize(path)).encode())
    with open(idx_path(ds.prefix), "rb") as f:
        h.update(f.read(1 << 16))
        f.seek(max(0, os.path.getsize(idx_path(ds.prefix)) - (1 << 16)))
        h.update(f.read())
    return h.hexdigest()


@dataclass
class PoolRecipe:
    """An epoch's pool of pairs described without drawing it: what plans depend on, and how to draw it.

    ``key`` names every input of :meth:`draw` (dataset paths and fingerprints, weights, split, seed), so
    a plan cache keyed on it is never reused for other data.
    """

    name: str
    datasets: list
    key: dict
    draw: Callable[[], PairPool]

    @classmethod
    def of_pool(cls, pool: PairPool, name: str = "pool") -> PoolRecipe:
        """A recipe for an already drawn pool (tests, tools): keyed on its arrays."""
        h = sha256()
        for arr in (pool.source, pool.index, pool.lengths, pool.prefix):
            if arr is not None:
                h.update(np.ascontiguousarray(arr).tobytes())
        return cls(name=name, datasets=pool.datasets, key={"pool_sha256": h.hexdigest()}, draw=lambda: pool)


def _dataset_keys(datasets: list) -> list[dict]:
    return [
        {
            "path": os.path.abspath(str(getattr(ds, "prefix", ""))),
            "pairs": len(ds),
            "fingerprint": dataset_fingerprint(ds),
        }
        for ds in datasets
    ]


def pool_recipes(
    data: DataConfig, train_sets: list, valid_sets: list
) -> tuple[PoolRecipe, PoolRecipe | None]:
    """The training and validation pools of ``data`` (``valid`` ``None`` when there is no validation data).

    Validation comes from ``data.valid`` when given, else a ``data.valid_fraction`` split of every
    training dataset (the same split the training pool leaves out).
    """
    split = not data.valid and data.valid_fraction > 0
    weights = [s.weight for s in data.train]
    shared = data.share_prefix
    base = {"datasets": _dataset_keys(train_sets), "seed": data.seed, "share_prefix": shared}

    def subsets(part: int) -> list[np.ndarray]:
        if not split:
            return [np.arange(len(ds), dtype=_subset_dtype(len(ds))) for ds in train_sets]
        return [split_indices(len(ds), data.valid_fraction, data.seed)[part] for ds in train_sets]

    train_split = {"valid_fraction": data.valid_fraction} if split else "all"
    train = PoolRecipe(
        name="train",
        datasets=train_sets,
        key={**base, "weights": weights, "split": train_split, "part": "train"},
        draw=lambda: blend(train_sets, weights, subsets(0), data.seed, shared),
    )
    valid = None
    if valid_sets:
        sizes = [float(len(ds)) for ds in valid_sets]
        valid = PoolRecipe(
            name="valid",
            datasets=valid_sets,
            key={
                "datasets": _dataset_keys(valid_sets),
                "seed": data.seed,
                "share_prefix": shared,
                "weights": sizes,
                "split": "all",
            },
            draw=lambda: blend(
                valid_sets,
                sizes,
                [np.arange(len(ds), dtype=_subset_dtype(len(ds))) for ds in valid_sets],
                data.seed,
                shared,
            ),
        )
    elif split and sum(int(round(len(ds) * data.valid_fraction)) for ds in train_sets):

        def draw_valid() -> PairPool:
            parts = subsets(1)
            return blend(train_sets, [float(len(v)) or 1.0 for v in parts], parts, data.seed, shared)

        valid = PoolRecipe(
            name="valid",
            datasets=train_sets,
            key={**base, "split": train_split, "part": "valid"},
            draw=draw_valid,
        )
    return train, valid


class PairBatches:
    """Micro-batches of one data-parallel rank, addressable by (step, micro-batch).

    ``pool`` is a drawn :class:`PairPool` or a :class:`PoolRecipe`; with a recipe and a shared
    ``store`` only the store's writer ever draws the pool. Plans are requested in the calling thread
    (collectively when the store has a barrier): call :meth:`prepare` for a step in the main thread
    before building its batches in another.
    """

    def __init__(
        self,
        pool: PairPool | PoolRecipe,
        *,
        layout: str,
        seq_length: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        seed: int,
        window: int = DEFAULT_WINDOW,
        shuffle: bool = True,
        pad_id: int = 0,
        thd: bool = False,
        name: str = "train",
        global_batch_size: int | None = None,
        store: PlanStore | None = None,
        share_prefix: bool = False,
    ):
        self.recipe = pool if isinstance(pool, PoolRecipe) else PoolRecipe.of_pool(pool, name)
        self.datasets = self.recipe.datasets
        self.id_offsets = pair_offsets(self.datasets)
        self.layout, self.seq_length = layout, seq_length
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.seed, self.window, self.shuffle = seed, window, shuffle
        self.pad_id, self.thd, self.name = pad_id, thd, name
        self.share_prefix = share_prefix
        self.store = store or PlanStore(None)
        self._pool: PairPool | None = None
        self._plans: dict[int, EpochPlan] = {}
        self._epoch_steps: list[int] = []
        plan = self.plan(0)  # the global batch size can be chosen from it afterwards
        if plan.dropped:
            log.warning(
                "%s: %d of %d pairs exceed data.seq_length=%d and are skipped",
                name,
                plan.dropped,
                plan.pairs + plan.dropped,
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
            plan.pairs,
            len(plan),
            self.unit,
            self.steps_per_epoch,
            100 * plan.efficiency,
        )

    @property
    def unit(self) -> str:
        return "pair" if self.layout == "padded" else "row"

    def plan_key(self, epoch: int) -> dict:
        """Everything the plan of ``epoch`` depends on."""
        return {
            "pool": self.recipe.key,
            "epoch": epoch,
            "layout": self.layout,
            "seq_length": self.seq_length,
            "window": self.window if self.layout == "packed" else None,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "share_prefix": self.share_prefix,  # plans packed by footprint never serve unshared rows
        }

    def _compute(self, epoch: int, sink: PlanWriter | None = None) -> tuple[dict[str, np.ndarray], dict]:
        if self._pool is None:
            self._pool = self.recipe.draw()
        if self.share_prefix and self._pool.prefix is None:
            raise ConfigError(
                f"{self.name}: data.share_prefix=true but the pool carries no shared-prefix lengths "
                "(draw it with blend(..., share_prefix=True))"
            )
        return compute_epoch_plan(
            self._pool,
            self.layout,
            self.seq_length,
            self.seed,
            epoch,
            self.window,
            self.shuffle,
            self.id_offsets,
            workers=self.store.workers,
            sink=sink,
            share_prefix=self.share_prefix,
        )

    def plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch`` (from the store; the two most recent are kept open)."""
        if epoch not in self._plans:
            stored = self.store.get(
                self.name, self.plan_key(epoch), lambda sink: self._compute(epoch, sink), stream=True
            )
            self._pool = None  # drawn only to compute; the plan is all the batches need
            if len(self._plans) >= 2:
                self._plans.pop(min(self._plans))
            self._plans[epoch] = EpochPlan(stored)
        return self._plans[epoch]

    @property
    def steps_per_epoch(self) -> int:
        return len(self.plan(0)) // self.global_batch_size

    def pairs_per_sample(self) -> float:
        plan = self.plan(0)
        return plan.pairs / max(1, len(plan))

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

    def step_pairs(self, step: int) -> int:
        """Pairs in global step ``step`` over all data-parallel ranks (what "auto" batch sizes aim at)."""
        epoch, within = self._locate(step)
        plan = self.plan(epoch)
        lo, hi = within * self.global_batch_size, (within + 1) * self.global_batch_size
        if plan.row_offsets is None:
            return hi - lo
        return int(plan.row_offsets[hi]) - int(plan.row_offsets[lo])

    def prepare(self, step: int) -> None:
        """Make sure the plan of ``step``'s epoch is open (collective with a shared store)."""
        self.plan(self._locate(step)[0])

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

    def pair(self, pair_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(chosen, rejected)`` tokens of a global pair id."""
        d = int(np.searchsorted(self.id_offsets, pair_id, side="right")) - 1
        return self.datasets[d].pair(int(pair_id - self.id_offsets[d]))

    def _collate(self, samples: list[np.ndarray]) -> RewardBatch:
        if self.share_prefix:  # padded: one pair per row; packed: the plan's pairs per row
            rows = [[self.pair(int(p)) for p in s] for s in samples]
            return collate_shared(rows, self.seq_length, pad_id=self.pad_id)
        if self.layout == "padded":
            pairs = [self.pair(int(p)) for s in samples for p in s]
            return collate_padded(pairs, self.seq_length, pad_id=self.pad_id, explicit_mask=False)
        rows = [[self.pair(int(p)) for p in s] for s in samples]
        return collate_packed(rows, self.seq_length, pad_id=self.pad_id, thd=self.thd)
