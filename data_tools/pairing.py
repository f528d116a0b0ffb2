"""``pair`` (policy-pool rollouts -> pre-training triples) and ``rank`` (human rankings -> triples).

``pair`` follows the paper's recipe (appendix A.1.1): for each prompt, reference and chosen are two
different responses of one policy A, rejected is a response of a different policy B. All responses of a
prompt must be seen together, so the input is first partitioned by a hash of the prompt into temporary
shard files, and each shard is then grouped in memory on its own: memory is bounded by the largest shard
(about input size / ``partitions``), not by the input.

Reproducibility: each prompt's random choices come from an RNG seeded by (seed, prompt); responses are
put in a canonical order first and prompts are emitted in hash order. The output therefore depends only
on the multiset of input rows and the seed, not on the order of rows or of input files.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from data_tools.loops import LoopConfig, truncate_loops
from data_tools.records import (
    DEFAULT_MAX_LINE_BYTES,
    LINE_REASONS,
    BadRows,
    RecordError,
    iter_rows,
    optional_str,
    require_str,
    require_text,
)
from data_tools.sharding import ShardSpec, partition_block, shard_path
from data_tools.writers import AtomicJsonlWriter
from megatron_polar.utils.io import check_writable, write_json_atomic
from megatron_polar.utils.logging import get_logger

logger = get_logger(__name__)


def to_messages(value: str | list[dict], role: str) -> list[dict]:
    """A string becomes one ``{"role": role, "content": value}`` message; message lists keep their roles."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": m.get("role", role), "content": m["content"]} for m in value]


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


# ---- pair -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairConfig:
    """Options of ``pair``."""

    pairs_per_prompt: int = 1  # triples drawn per prompt (fewer when the pool cannot supply them)
    allow_policy_repeat: bool = False  # may a policy take part in several pairs of one prompt?
    holdout_policies: frozenset[str] = frozenset()  # pairs touching these go to the holdout output only
    seed: int = 1234
    partitions: int = 64  # temporary shard files for the external group-by
    truncate_loops: bool = True
    loops: LoopConfig = LoopConfig()
    strict: bool = False
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


@dataclass
class PairStats:
    """Counters reported by ``pair``."""

    rows_read: int = 0
    prompts: int = 0
    pairs_written: int = 0
    holdout_pairs_written: int = 0
    loops_truncated: int = 0
    duplicate_responses: int = 0
    bad_rows: BadRows = field(default_factory=BadRows)
    skipped_prompts: BadRows = field(default_factory=BadRows)

    def as_dict(self) -> dict:
        """JSON-ready summary."""
        d = {k: v for k, v in self.__dict__.items() if not isinstance(v, BadRows)}
        return {**d, "bad_rows": self.bad_rows.as_dict(), "skipped_prompts": self.skipped_prompts.as_dict()}


@dataclass(frozen=True)
class Response:
    """One rollout of one policy, in canonical form."""

    policy: str
    messages: str  # canonical JSON text of the message list
    location: str


def draw_pairs(
    by_policy: dict[str, list[Response]],
    n: int,
    rng: random.Random,
    *,
    allow_repeat: bool,
    accept: Callable[[str, str], bool] = lambda a, b: True,
) -> list[tuple[Response, Response, Response]]:
    """Draw up to ``n`` (reference, chosen, rejected) triples for one prompt.

    Reference and chosen are two different responses of a policy A with >= 2 responses; rejected is a
    response of a policy B != A; ``accept(A, B)`` filters policy combinations. Without
    ``allow_repeat`` every policy takes part in at most one pair of the prompt; with it, policies may
    repeat but the same three responses are never drawn twice.
    """
    policies = sorted(by_policy)
    a_pool = [p for p in policies if len(by_policy[p]) >= 2]
    out: list[tuple[Response, Response, Response]] = []
    if allow_repeat:
        combos = [(a, b) for a in a_pool for b in policies if b != a and accept(a, b)]
        seen: set[tuple] = set()
        for _ in range(20 * n):
            if len(out) >= n or not combos:
                break
            a, b = rng.choice(combos)
            ia, ic = rng.sample(range(len(by_policy[a])), 2)
            ib = rng.randrange(len(by_policy[b]))
            if (a, ia, ic, b, ib) in seen:
                continue
            seen.add((a, ia, ic, b, ib))
            out.append((by_policy[a][ia], by_policy[a][ic], by_policy[b][ib]))
        return out
    used: set[str] = set()
    rng.shuffle(a_pool)
    for a in a_pool:
        if len(out) >= n:
            break
        if a in used:
            continue
        b_pool = [b for b in policies if b != a and b not in used and accept(a, b)]
        if not b_pool:
            continue
        b = rng.choice(b_pool)
        ref, chosen = rng.sample(by_policy[a], 2)
        out.append((ref, chosen, rng.choice(by_policy[b])))
        used.update((a, b))
    return out


def _partition_rows(
    paths: list[str], tmpdir: str, cfg: PairConfig, stats: PairStats, shard: ShardSpec = ShardSpec()
) -> list[str]:
    """Stream the input into ``cfg.partitions`` shard files keyed by a hash of (prompt, wrapper).

    Under sharding only this shard's block of partitions is kept. Rows without a usable prompt key
    (unparseable or invalid) are counted by shard 0 alone, so shard counters add up to a one-process run's.
    """
    block = partition_block(cfg.partitions, shard)
    counts_unkeyed = shard.index == 0
    shard_paths = [os.path.join(tmpdir, f"part-{i:05d}.jsonl") for i in block]
    shards = [open(p, "w", encoding="utf-8") for p in shard_paths]
    bad = stats.bad_rows if counts_unkeyed else BadRows()
    try:
        for location, row in iter_rows(paths, bad, strict=cfg.strict, max_line_bytes=cfg.max_line_bytes):
            try:
                require_text(row, "prompt")
                policy = require_str(row, "policy")
                require_text(row, "response")
                wrapper = optional_str(row, "wrapper")
                prompt = to_messages(row["prompt"], "user")
                response = to_messages(row["response"], "assistant")
            except RecordError as e:
                if cfg.strict:
                    raise e.at(location) from None
                if counts_unkeyed:
                    stats.rows_read += 1
                    stats.bad_rows.add(e.at(location), log=True)
                continue
            key = json.dumps([prompt, wrapper], ensure_ascii=False, sort_keys=True)
            part = int.from_bytes(_digest(key)[:8], "little") % cfg.partitions
            if part not in block:
                continue
            stats.rows_read += 1
            record = {"k": key, "p": policy, "r": response, "l": location}
            shards[part - block.start].write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        for f in shards:
            f.close()
    return shard_paths


def _load_groups(
    shard_path: str, cfg: PairConfig, stats: PairStats
) -> list[tuple[str, dict[str, list[Response]], str]]:
    """Group one shard by prompt; canonical response order, duplicates dropped, loops truncated."""
    groups: dict[str, dict[str, set]] = {}
    first_location: dict[str, str] = {}
    with open(shard_path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            messages = rec["r"]
            if cfg.truncate_loops:
                for m in messages:
                    m["content"], cut = truncate_loops(m["content"], cfg.loops)
                    stats.loops_truncated += cut
            canon = json.dumps(messages, ensure_ascii=False, sort_keys=True)
            by_policy = groups.setdefault(rec["k"], {})
            seen = by_policy.setdefault(rec["p"], {})
            if canon in seen:
                stats.duplicate_responses += 1
            else:
                seen[canon] = rec["l"]
            first_location.setdefault(rec["k"], rec["l"])
    out = []
    for key in sorted(groups, key=_digest):
        by_policy = {
            p: [Response(p, canon, loc) for canon, loc in sorted(resps.items())]
            for p, resps in groups[key].items()
        }
        out.append((key, by_policy, first_location[key]))
    return out


def _triple_row(key: str, triple: tuple[Response, Response, Response]) -> dict:
    prompt, wrapper = json.loads(key)
    ref, chosen, rejected = triple
    row = {
        "prompt": _role_first(prompt),
        "reference": _role_first(json.loads(ref.messages)),
        "chosen": _role_first(json.loads(chosen.messages)),
        "rejected": _role_first(json.loads(rejected.messages)),
        "policy_a": ref.policy,
        "policy_b": rejected.policy,
    }
    if wrapper is not None:
        row["wrapper"] = wrapper
    return row


def _role_first(messages: list[dict]) -> list[dict]:
    """Messages as ``{"role", "content"}`` in that key order (canonical JSON sorted them)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _prompt_rng(seed: int, key: str, stream: str) -> random.Random:
    return random.Random(int.from_bytes(_digest(f"{seed}\x00{stream}\x00{key}"), "little"))


def run_pair(
    paths: list[str],
    output: str,
    cfg: PairConfig,
    holdout_output: str | None = None,
    tmp_dir: str | None = None,
    overwrite: bool = False,
    shard: ShardSpec = ShardSpec(),
) -> PairStats:
    """Turn rollout JSONL files into triples; see the module docstring. Returns the counters.

    With ``shard.count > 1``, writes shard ``shard.index`` to ``<output>.shard-<i>-of-<n>...`` (and the
    holdout likewise) plus its ``.done.json`` marker; ``data_tools.merge.merge_pair`` joins the shards.
    """
    if cfg.holdout_policies and not holdout_output:
        raise ValueError("--holdout-policies needs --holdout-output")
    if shard.sharded:
        output = shard_path(output, shard.index, shard.count)
        holdout_output = shard_path(holdout_output, shard.index, shard.count) if holdout_output else None
        check_writable([done_path(output)], overwrite)
        if os.path.exists(done_path(output)):
            os.remove(done_path(output))  # never let an old marker vouch for new outputs
    stats = PairStats()
    holdout = cfg.holdout_policies
    tmpdir = tempfile.mkdtemp(prefix="polar-pair-", dir=tmp_dir or os.path.dirname(os.path.abspath(output)))
    try:
        with (
            AtomicJsonlWriter(output, overwrite) as main_out,
            AtomicJsonlWriter(holdout_output, overwrite) as hold_out,
        ):
            for part_path in _partition_rows(paths, tmpdir, cfg, stats, shard):
                for key, by_policy, location in _load_groups(part_path, cfg, stats):
                    stats.prompts += 1
                    reason = _skip_reason(by_policy)
                    if reason:
                        stats.skipped_prompts.add(
                            RecordError(reason, f"policies {sorted(by_policy)}", location)
                        )
                        continue
                    main_pool = {p: r for p, r in by_policy.items() if p not in holdout}
                    main = draw_pairs(
                        main_pool,
                        cfg.pairs_per_prompt,
                        _prompt_rng(cfg.seed, key, "main"),
                        allow_repeat=cfg.allow_policy_repeat,
                    )
                    held = []
                    if holdout:
                        held = draw_pairs(
                            by_policy,
                            cfg.pairs_per_prompt,
                            _prompt_rng(cfg.seed, key, "holdout"),
                            allow_repeat=cfg.allow_policy_repeat,
                            accept=lambda a, b: a in holdout or b in holdout,
                        )
                    if not main and not held:
                        stats.skipped_prompts.add(
                            RecordError(
                                "no_valid_policy_combination", f"policies {sorted(by_policy)}", location
                            )
                        )
                    for triple in main:
                        main_out.write(_triple_row(key, triple))
                    for triple in held:
                        hold_out.write(_triple_row(key, triple))
                    stats.pairs_written += len(main)
                    stats.holdout_pairs_written += len(held)
                os.remove(part_path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    stats.rows_read += _unparseable(stats.bad_rows)
    if shard.sharded:
        marker = {
            "shard": {"index": shard.index, "count": shard.count},
            "settings": _settings(cfg),
            "stats": stats.as_dict(),
        }
        write_json_atomic(done_path(output), marker, ensure_ascii=False, newline=False)
    return stats


def done_path(output: str) -> str:
    """The completion marker of a ``pair`` shard (its counters), written after its outputs."""
    return output + ".done.json"


def _settings(cfg: PairConfig) -> dict:
    """The options that decide a shard's content: all shards of one output must agree on them."""
    d = asdict(cfg)
    d["holdout_policies"] = sorted(cfg.holdout_policies)
    return d


def _unparseable(bad: BadRows) -> int:
    """Lines the reader rejected before they became rows (so ``rows_read`` counts every line)."""
    return sum(bad.counts.get(r, 0) for r in LINE_REASONS)


def _skip_reason(by_policy: dict[str, list[Response]]) -> str | None:
    if len(by_policy) < 2:
        return "single_policy"
    if not any(len(r) >= 2 for r in by_policy.values()):
        return "no_policy_with_two_responses"
    return None


# ---- rank -------------------------------------------------------------------------------------------

RANK_MODES = ("first3", "all")


@dataclass
class RankStats:
    """Counters reported by ``rank``."""

    rows_read: int = 0
    triples_written: int = 0
    bad_rows: BadRows = field(default_factory=BadRows)

    def as_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "rows_read": self.rows_read,
            "triples_written": self.triples_written,
            "bad_rows": self.bad_rows.as_dict(),
        }


def ranked_triples(responses: list, mode: str) -> list[tuple[int, int, int]]:
    """(reference, chosen, rejected) indices into a best-to-worst ranking.

    ``first3``: ``(0, 1, 2)`` only (the paper's protocol; extra responses are ignored).
    ``all``: reference 0 and every ``(i, j)`` with ``1 <= i < j``, i.e. all ordered pairs below the best.
    """
    if len(responses) < 3:
        return []
    if mode == "first3":
        return [(0, 1, 2)]
    if mode == "all":
        return [(0, i, j) for i in range(1, len(responses)) for j in range(i + 1, len(responses))]
    raise ValueError(f"unknown rank mode {mode!r}; choose from {RANK_MODES}")


def run_rank(
    paths: list[str],
    output: str,
    *,
    mode: str = "first3",
    strict: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    overwrite: bool = False,
) -> RankStats:
    """Turn human-ranked rows ``{"prompt", "responses": [best..worst], "category"?}`` into triples."""
    if mode not in RANK_MODES:
        raise ValueError(f"unknown rank mode {mode!r}; choose from {RANK_MODES}")
    stats = RankStats()
    with AtomicJsonlWriter(output, overwrite) as out:
        for location, row in iter_rows(paths, stats.bad_rows, strict=strict, max_line_bytes=max_line_bytes):
            stats.rows_read += 1
            try:
                require_text(row, "prompt")
                responses = row.get("responses")
                if not isinstance(responses, list):
                    raise RecordError(
                        "missing_field" if responses is None else "wrong_type",
                        "'responses' must be a list ranked best to worst",
                    )
                for i in range(len(responses)):
                    require_text({f"responses[{i}]": responses[i]}, f"responses[{i}]")
                category = optional_str(row, "category")
                wrapper = optional_str(row, "wrapper")
                if len(responses) < 3:
                    raise RecordError("fewer_than_3_responses", f"{len(responses)} responses")
            except RecordError as e:
                if strict:
                    raise e.at(location) from None
                stats.bad_rows.add(e.at(location), log=True)
                continue
            prompt = to_messages(row["prompt"], "user")
            msgs = [to_messages(r, "assistant") for r in responses]
            for r, c, j in ranked_triples(responses, mode):
                triple = {"prompt": prompt, "reference": msgs[r], "chosen": msgs[c], "rejected": msgs[j]}
                if category is not None:
                    triple["category"] = category
                if wrapper is not None:
                    triple["wrapper"] = wrapper
                out.write(triple)
                stats.triples_written += 1
    stats.rows_read += _unparseable(stats.bad_rows)
    return stats
