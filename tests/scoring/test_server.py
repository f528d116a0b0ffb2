"""The reward server on loopback: protocols, parity with the API, bad requests, concurrency, shutdown."""

from __future__ import annotations

import http.client
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from megatron_polar.scoring.server import build_server
from tests.support.http_client import get, openrlhf_get_reward, post
from tests.support.scoring import random_text

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(scorer):
    srv = build_server(scorer, "127.0.0.1", 0, max_batch=32, max_wait_ms=5, max_body_bytes=64 * 1024)
    srv.start_background()
    yield srv
    srv.stop()


def test_health(server):
    status, body = get(server.url + "/health")
    assert status == 200 and body["status"] == "ok" and body["max_batch"] == 32 and "model" in body


def test_score_endpoint_matches_api_exactly(server, scorer):
    req = {"prompt": "what is 2+2", "references": ["4", "four"], "candidates": ["4", "5", "no idea at all"]}
    status, body = post(server.url + "/score", {**req, "detail": True})
    assert status == 200
    expect = scorer.score_detailed(req["prompt"], candidates=req["candidates"], references=req["references"])
    assert body["rewards"] == [s.reward for s in expect]
    assert body["truncated"] == [False] * 3
    assert [d["per_reference"] for d in body["detail"]] == [s.per_reference for s in expect]


def test_openrlhf_protocol(server, scorer):
    prompts = ["Question: 2+2?\nAnswer:", "Name a pet.\n"]
    responses = [" 4", " A cat."]
    labels = [" 4", " A dog."]
    rewards = openrlhf_get_reward(
        server.url + "/get_reward", [p + r for p, r in zip(prompts, responses)], prompts, labels
    )
    expect = [
        s[0].reward
        for s in scorer.score_requests([_req(p, [lab], [r]) for p, r, lab in zip(prompts, responses, labels)])
    ]
    assert rewards == expect
    status, body = post(
        server.url + "/get_reward",
        {"query": [prompts[0] + " 4"], "prompts": prompts[:1], "labels": [[" 4", " four"]]},
    )
    assert status == 200 and body["scores"] == body["rewards"] and "extra_logs" in body
    assert body["rewards"][0] == pytest.approx(
        scorer.score(prompts[0], candidates=[" 4"], references=[" 4", " four"])[0], abs=1e-5
    )


def test_openrlhf_grpo_groups_share_rows_and_score_like_one_query_at_a_time(server, scorer):
    from megatron_polar.scoring.prefix_sharing import plan_shared_rows

    rng = random.Random(11)
    prompts, queries, labels = [], [], []
    for _ in range(2):  # two prompts, four rollouts each, as a GRPO trainer sends them
        prompt, label = random_text(rng, 15, 25), random_text(rng, 10, 20)
        for _ in range(4):
            response = " " + random_text(rng, 1, 12)
            prompts.append(prompt)
            queries.append(prompt + response)
            labels.append(label)
    rewards = openrlhf_get_reward(server.url + "/get_reward", queries, prompts, labels)
    one_by_one = [scorer.score(p, lab, [q[len(p) :]])[0] for p, q, lab in zip(prompts, queries, labels)]
    assert rewards == pytest.approx(one_by_one, abs=1e-5)
    encoded = [
        s
        for p, q, lab in zip(prompts, queries, labels)
        for s in scorer.encode(_req(p, [lab], [q[len(p) :]])).sequences
    ]
    rows, _ = plan_shared_rows(
        encoded, scorer.min_shared_prefix, scorer.shared_row_tokens, scorer.attention_weight
    )
    assert sorted(len(r.members) for r in rows) == [4, 4]  # each group is scored in one shared row


def _req(prompt, refs, cands):
    from megatron_polar.scoring.requests import ScoreRequest

    return ScoreRequest(prompt=prompt, references=refs, candidates=cands)


BAD = [
    ("/score", None, b"{not json", 400, "invalid JSON"),
    ("/score", [1, 2], None, 400, "JSON object"),
    ("/score", {"reference": "r", "candidates": ["c"]}, None, 400, "missing field 'prompt'"),
    ("/score", {"prompt": "p", "candidates": ["c"]}, None, 400, "'reference'"),
    ("/score", {"prompt": "p", "reference": "r"}, None, 400, "missing field 'candidates'"),
    ("/score", {"prompt": "p", "reference": "r", "candidates": []}, None, 400, "must not be empty"),
    ("/score", {"prompt": "p", "references": [], "candidates": ["c"]}, None, 400, "must not be empty"),
    ("/score", {"prompt": 3, "reference": "r", "candidates": ["c"]}, None, 400, "'prompt' must be"),
    (
        "/score",
        {"prompt": "p", "reference": "r", "candidates": "c"},
        None,
        400,
        "'candidates' must be a list",
    ),
    ("/score", {"prompt": "p", "reference": "r", "candidates": [1]}, None, 400, "candidates[0]"),
    ("/score", {"prompt": [{"role": "u"}], "reference": "r", "candidates": ["c"]}, None, 400, "content"),
    ("/get_reward", {"query": ["a"], "prompts": ["a"]}, None, 400, "missing field 'labels'"),
    ("/get_reward", {"query": [], "prompts": [], "labels": []}, None, 400, "must not be empty"),
    (
        "/get_reward",
        {"query": ["ab", "ac"], "prompts": ["a"], "labels": ["x", "y"]},
        None,
        400,
        "'prompts' has 1",
    ),
    ("/get_reward", {"query": "ab", "prompts": ["a"], "labels": ["x"]}, None, 400, "'query' must be a list"),
    ("/get_reward", {"query": [5], "prompts": ["a"], "labels": ["x"]}, None, 400, "query[0]"),
    ("/get_reward", {"query": ["zzz"], "prompts": ["a"], "labels": ["x"]}, None, 400, "does not contain"),
    ("/get_reward", {"query": ["ab"], "prompts": ["a"], "labels": [""]}, None, 400, "--data.label_key"),
    ("/get_reward", {"query": ["ab"], "prompts": ["a"], "labels": [None]}, None, 400, "--label_key"),
    ("/get_reward", {"query": ["ab"], "prompts": ["a"]}, None, 400, "--data.label_key"),
    ("/nowhere", {}, None, 404, "no endpoint"),
    ("/score", None, b"x" * (64 * 1024 + 1), 413, "--max-body-bytes"),
]


@pytest.mark.parametrize("path,body,raw,status,message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_get_4xx_and_server_keeps_serving(server, path, body, raw, status, message):
    got, payload = post(server.url + path, body, raw=raw)
    assert got == status and message in payload["error"]
    ok, _ = post(server.url + "/score", {"prompt": "p", "reference": "r", "candidates": ["c"]})
    assert ok == 200


def test_missing_content_length_and_wrong_method(server):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/score")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 411
    conn.close()
    assert get(server.url + "/score")[0] == 405


def test_overlong_candidate_is_truncated_not_an_error(server):
    status, body = post(
        server.url + "/score", {"prompt": "p", "reference": "r", "candidates": ["ok", "word " * 6000]}
    )
    assert status == 200 and body["truncated"] == [False, True]


def test_concurrent_clients_get_their_own_results(server, scorer):
    n_clients, per_client = 8, 6
    rng = random.Random(5)
    work = {
        k: [
            (random_text(rng), random_text(rng), [random_text(rng, 1, 20) for _ in range(1 + j % 3)])
            for j in range(per_client)
        ]
        for k in range(n_clients)
    }
    results: dict[int, list] = {}
    batches_before = server.service.batcher.batches

    def client(k: int) -> None:
        out = []
        for prompt, ref, cands in work[k]:
            status, body = post(
                server.url + "/score", {"prompt": prompt, "reference": ref, "candidates": cands}
            )
            out.append(body["rewards"] if status == 200 else body)
        results[k] = out

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == n_clients
    for k in range(n_clients):
        for (prompt, ref, cands), got in zip(work[k], results[k]):
            assert got == pytest.approx(scorer.score(prompt, ref, cands), abs=1e-5)
    assert server.service.batcher.batches - batches_before < n_clients * per_client, "no request was batched"


def test_graceful_stop_finishes_in_flight_requests(scorer):
    srv = build_server(scorer, "127.0.0.1", 0, max_batch=4, max_wait_ms=50)
    srv.start_background()
    out: list = []
    reqs = [
        threading.Thread(
            target=lambda: out.append(
                post(srv.url + "/score", {"prompt": "p", "reference": "r", "candidates": ["a"] * 12})[0]
            )
        )
        for _ in range(3)
    ]
    for t in reqs:
        t.start()
    threading.Event().wait(0.02)
    srv.stop()
    for t in reqs:
        t.join(timeout=30)
    assert out == [200, 200, 200]


@pytest.mark.slow
def test_serve_cli_exits_zero_on_sigterm(checkpoint_path, tokenizer_path):
    args = [
        "--model",
        checkpoint_path,
        "--tokenizer",
        tokenizer_path,
        "--device",
        "cpu",
        "--port",
        "0",
        "--log-level",
        "WARNING",
    ]
    # The parent's world of one holds MASTER_PORT: the child must pick its own.
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.scoring.serve_entry", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        line = ""
        for _ in range(50):  # bounded: the first stdout line is "listening on URL"
            line = proc.stdout.readline()
            if line.startswith("listening on") or not line:
                break
        assert line.startswith("listening on"), line
        url = line.split()[-1]
        assert post(url + "/score", {"prompt": "p", "reference": "r", "candidates": ["c"]})[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
