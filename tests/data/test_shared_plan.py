"""Epoch plans with ``data.share_prefix``: packed by footprint, never overflowing, keyed apart from
unshared plans, collated into shared-prefix rows, and a clear error for datasets without the sidecar."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_polar.config.loader import ConfigError
from megatron_polar.config.schema import DataConfig, DatasetSpec
from megatron_polar.data.batching import shared_footprint as batching_footprint
from megatron_polar.data.epoch_plan import pair_footprints
from megatron_polar.data.pair_dataset import DatasetError, shared_prefix_length
from megatron_polar.data.plan_store import PlanStore
from megatron_polar.data.sampler import PairBatches, PairPool, blend, open_datasets, pool_recipes
from megatron_polar.planning.lengths import length_stats


class _SharedDataset:
    """Pairs whose two sequences share a random prefix; tokens encode the pair so batches can be traced."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.prefix = rng.integers(2, 150, size=n).astype(np.int32)
        suffix = rng.integers(1, 60, size=(n, 2))
        self.lengths = (self.prefix[:, None] + suffix).astype(np.int32)

    def __len__(self) -> int:
        return len(self.lengths)

    def pair(self, i: int):
        p = int(self.prefix[i])
        c, r = (int(x) for x in self.lengths[i])
        base = np.full(p, 3 * (i % 100) + 1)
        return np.concatenate([base, np.full(c - p, 400)]), np.concatenate([base, np.full(r - p, 401)])

    def pair_lengths(self) -> np.ndarray:
        return self.lengths

    def prefix_lengths(self) -> np.ndarray:
        return self.prefix

    def fingerprint(self) -> str:
        return f"shared-{len(self)}"


def _pool(n: int, seed: int = 0) -> PairPool:
    ds = _SharedDataset(n, seed)
    return blend([ds], [1.0], [np.arange(n)], seed=1, share_prefix=True)


def _batches(pool, **kw) -> PairBatches:
    args = dict(
        layout="packed",
        seq_length=256,
        global_batch_size=4,
        micro_batch_size=2,
        dp_rank=0,
        dp_size=1,
        seed=3,
        share_prefix=True,
    )
    return PairBatches(pool, **{**args, **kw})


def test_fixture_prefixes_are_what_the_tokens_share():
    ds = _SharedDataset(50)
    assert [shared_prefix_length(*ds.pair(i)) for i in range(50)] == ds.prefix.tolist()


def test_footprint_matches_the_collator_and_the_planner():
    pool = _pool(300)
    c, r = pool.lengths[:, 0], pool.lengths[:, 1]
    fp = pair_footprints(c, r, pool.prefix)
    assert fp.dtype == np.int32  # no int64 temporaries of the epoch's size on the plan writer
    assert np.array_equal(fp, batching_footprint(c, r, pool.prefix))
    assert fp.sum() == length_stats(c, r, pool.prefix).shared_tokens


def test_packs_by_footprint_and_no_row_overflows():
    pool = _pool(600)
    data = _batches(pool, window=64, seq_length=512)
    plan = data.plan(0)
    fp = pair_footprints(pool.lengths[:, 0], pool.lengths[:, 1], pool.prefix).astype(np.int64)
    rows = [fp[plan.sample_pairs(s)].sum() for s in range(len(plan))]
    assert max(rows) <= 512
    assert plan.pairs == len(pool) and plan.real_tokens == int(fp.sum())
    # Footprint packing needs fewer rows than packing both whole sequences of every pair.
    unshared = _batches(pool, window=64, seq_length=512, share_prefix=False).plan(0)
    assert len(plan) < 0.8 * len(unshared)
    assert sum(rows) / (len(plan) * 512) > 0.9  # and fills them as tightly
    # Collated, the rows hold exactly those tokens (the collator itself raises on overflow).
    for step in range(3):
        for batch in data.step_batches(step):
            assert batch.tokens.shape == (1, 2 * 512)
            pairs = batch.reward_index.shape[0]
            assert pairs >= 2 and batch.num_real_tokens <= 2 * 512


def test_padded_shared_layout_is_one_row_per_pair_and_drops_by_footprint():
    pool = _pool(200)
    data = _batches(pool, layout="padded", seq_length=160, micro_batch_size=2)
    plan = data.plan(0)
    fp = pair_footprints(pool.lengths[:, 0], pool.lengths[:, 1], pool.prefix)
    assert plan.dropped == int((fp > 160).sum()) > 0
    assert len(plan) == plan.pairs == 200 - plan.dropped
    batch = data.step_batches(0)[0]
    assert batch.tokens.shape == (1, 2 * 160) and batch.reward_index.shape == (2, 2)


def test_plan_key_and_store_keep_shared_and_unshared_plans_apart(tmp_path):
    pool = _pool(300)
    store = PlanStore(tmp_path)
    shared = _batches(pool, store=store)
    plain = _batches(pool, store=store, share_prefix=False)
    assert shared.plan_key(0) != plain.plan_key(0)
    assert store.path("train", shared.plan_key(0)) != store.path("train", plain.plan_key(0))
    assert store.built == 2 and len(shared.plan(0)) != len(plain.plan(0))
    again = _batches(pool, store=store)
    assert store.built == 2 and np.array_equal(again.plan(0).pair_ids, shared.plan(0).pair_ids)


def test_pool_recipe_keys_differ_and_the_drawn_pool_carries_prefixes():
    ds = _SharedDataset(80)
    cfg = DataConfig(train=[DatasetSpec(path="x")], share_prefix=True)
    train, _ = pool_recipes(cfg, [ds], [])
    plain, _ = pool_recipes(DataConfig(train=[DatasetSpec(path="x")], share_prefix=False), [ds], [])
    assert train.key != plain.key
    pool = train.draw()
    assert np.array_equal(pool.prefix, ds.prefix[pool.index])
    assert plain.draw().prefix is None


def test_a_pool_without_prefixes_is_refused_by_name():
    ds = _SharedDataset(40)
    pool = blend([ds], [1.0], [np.arange(40)], seed=1)
    with pytest.raises(ConfigError, match="data.share_prefix"):
        _batches(pool)


def test_dataset_without_sidecar_fails_at_open_naming_file_and_fix(tmp_path, sp_tok):
    from data_tools.build import BuildConfig, build_dataset
    from tests.support.text_data import make_triples, strip_prefix_sidecar, write_jsonl

    src = write_jsonl(tmp_path / "t.jsonl", make_triples(12))
    prefix = str(tmp_path / "old")
    build_dataset([src], prefix, sp_tok, BuildConfig(max_length=256, max_response_length=100, progress=False))
    assert len(open_datasets([DatasetSpec(path=prefix)], share_prefix=True)[0]) == 12
    strip_prefix_sidecar(prefix)
    assert len(open_datasets([DatasetSpec(path=prefix)])[0]) == 12  # unshared: still fine
    with pytest.raises(DatasetError, match=rf"{prefix}\.prefix\.npy: missing.*add-prefix-lengths {prefix}"):
        open_datasets([DatasetSpec(path=prefix)], share_prefix=True)


def test_config_key_is_validated_by_name():
    from dataclasses import replace

    from megatron_polar.config import load_config
    from megatron_polar.config.validate import validate

    assert load_config([]).data.share_prefix is True  # the default since exactness is tested
    assert load_config(["data.share_prefix=false"]).data.share_prefix is False
    with pytest.raises(ConfigError, match="data.share_prefix"):
        load_config(["data.share_prefix=maybe"])
    cfg = load_config([])
    with pytest.raises(ConfigError, match="data.share_prefix must be true or false"):
        validate(replace(cfg, data=replace(cfg.data, share_prefix="yes")))
