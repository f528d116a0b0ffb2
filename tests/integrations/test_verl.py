"""verl's batch reward function against a real reward server, called as verl's BatchRewardManager calls it
(verl/workers/reward_manager/batch.py:70-76 at b178a3c: keyword arguments data_sources, solution_strs,
ground_truths, extra_infos, plus the config's reward_kwargs; non-tensor fields arrive as numpy object
arrays)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from megatron_polar.integrations.verl import RewardServerError, compute_score_batch
from megatron_polar.scoring.server import build_server
from tests.support.http_client import post
from tests.support.scoring import random_text


@pytest.fixture(scope="module")
def server(scorer):
    srv = build_server(scorer, "127.0.0.1", 0, max_batch=64, max_wait_ms=5)
    srv.start_background()
    yield srv
    srv.stop()


def _verl_batch(n_prompts: int, per_prompt: int, seed: int = 7):
    """Rows as verl's RL dataset holds them (prompt in extra_info, reference in reward_model.ground_truth),
    rollouts interleaved across prompts so that the input order is not the group order."""
    rng = random.Random(seed)
    rows = []
    for k in range(n_prompts):
        prompt = [
            {"role": "system", "content": "be helpful"},
            {"role": "user", "content": random_text(rng, 8, 16)},
        ]
        truth = (
            [{"role": "assistant", "content": random_text(rng, 5, 12)}] if k % 2 else random_text(rng, 5, 12)
        )
        rows += [(prompt, truth, random_text(rng, 1, 15)) for _ in range(per_prompt)]
    rng.shuffle(rows)
    return rows


def test_rewards_come_back_in_input_order_one_request_per_prompt(server):
    rows = _verl_batch(n_prompts=3, per_prompt=4)
    before = server.service.requests_served
    rewards = compute_score_batch(
        data_sources=np.array(["polar"] * len(rows), dtype=object),
        solution_strs=[r[2] for r in rows],
        # parquet list columns come back as numpy arrays
        ground_truths=[np.array(r[1], dtype=object) if isinstance(r[1], list) else r[1] for r in rows],
        extra_infos=np.array(
            [{"prompt": np.array(r[0], dtype=object), "index": i} for i, r in enumerate(rows)]
        ),
        url=server.url,
    )
    assert server.service.requests_served - before == 3  # grouped: one /score request per prompt
    assert len(rewards) == len(rows) and all(isinstance(r, float) for r in rewards)
    for (prompt, truth, response), reward in zip(rows, rewards):
        status, body = post(
            server.url + "/score", {"prompt": prompt, "reference": truth, "candidates": [response]}
        )
        assert status == 200 and reward == pytest.approx(body["rewards"][0], abs=1e-5)
    assert len({round(r, 4) for r in rewards}) > 3  # not one value broadcast


def test_thinking_is_dropped_and_url_may_name_the_endpoint(server):
    prompt, truth = "what is two plus two", "four"
    got = compute_score_batch(
        ["d", "d"],
        ["<think>\nlet me see\n</think>\n\nfour", "four"],
        [truth, truth],
        [{"question": prompt}, {"question": prompt}],
        url=server.url + "/score",
        prompt_key="question",
    )
    assert got[0] == pytest.approx(got[1], abs=1e-5)
    kept = compute_score_batch(
        ["d"],
        ["<think>\nlet me see\n</think>\n\nfour"],
        [truth],
        [{"prompt": prompt}],
        url=server.url,
        strip_thinking=False,
    )
    assert abs(kept[0] - got[1]) > 1e-4


def test_bad_rows_name_the_field_to_fix(server):
    with pytest.raises(ValueError, match=r"extra_infos\[1\] has no 'prompt'.*extra_info"):
        compute_score_batch(["d", "d"], ["a", "b"], ["r", "r"], [{"prompt": "p"}, {}], url=server.url)
    with pytest.raises(ValueError, match=r"ground_truths\[0\].*reward_model.ground_truth.*empty"):
        compute_score_batch(["d"], ["a"], [""], [{"prompt": "p"}], url=server.url)
    assert compute_score_batch(["d"], ["a"], [""], [{"prompt": "p"}], url=server.url, reference_free=True)


def test_server_errors_are_not_retried_and_unreachable_servers_are(server):
    with pytest.raises(RewardServerError, match="answered 400"):  # a 4xx is final
        compute_score_batch(["d"], ["a"], ["r"], [{"prompt": "p"}], url=server.url, wrapper=5)
    with pytest.raises(RewardServerError, match="after 3 attempts"):
        compute_score_batch(
            ["d"], ["a"], ["r"], [{"prompt": "p"}], url="http://127.0.0.1:9", max_retries=2, retry_delay_s=0.0
        )
