"""OpenRLHF's remote reward model against the real server: requests built the way OpenRLHF builds them
(chat-templated prompts, decoded queries with the policy's EOS, Llama-3-style space clean-up) score like
``/score`` on the clean prompt and response; empty labels and oversized bodies get a 4xx naming the fix;
a 1,024-rollout batch of 8k-token responses passes the HTTP layer."""

from __future__ import annotations

import http.client
import json
import random

import pytest

from megatron_polar.scoring.server import build_server
from tests.scoring.policy_chat import decode_cleans_up_spaces, make_policy_tokenizer, openrlhf_rollout
from tests.support.http_client import post
from tests.support.scoring import WORDS, random_text

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2 ?"}],
    [{"role": "system", "content": "Be brief ."}, {"role": "user", "content": "Name a pet , please ."}],
    [
        {"role": "user", "content": "Name a pet ."},
        {"role": "assistant", "content": "A cat , or a dog ."},
        {"role": "user", "content": "Which one do you like ? It 's hard !"},
    ],
]
RESPONSES = ["It 's 4 , is n't it ?", "A dog .\nOr a fish !", "the answer is four because two and two"]
LABEL = "The answer is four ."


@pytest.fixture(scope="module")
def server(scorer):
    srv = build_server(scorer, "127.0.0.1", 0, max_batch=64, max_wait_ms=5)
    srv.start_background()
    yield srv
    srv.stop()


def _score(url, prompt, reference, candidates):
    status, body = post(url + "/score", {"prompt": prompt, "reference": reference, "candidates": candidates})
    assert status == 200, body
    return body["rewards"]


@pytest.mark.parametrize("kind", ["chatml", "llama3"])
def test_openrlhf_rollouts_score_like_score_on_clean_text(server, kind):
    tok = make_policy_tokenizer(kind)
    queries, prompts, expected, raw_prefix_split = [], [], [], []
    for messages in CONVERSATIONS:
        clean_prompt = "\n".join(m["content"] for m in messages)
        decoded = []
        for response in RESPONSES:
            query, prompt, as_decoded = openrlhf_rollout(tok, messages, response)
            queries.append(query)
            prompts.append(prompt)
            decoded.append(as_decoded)
            raw_prefix_split.append(query.startswith(prompt))
        expected += _score(server.url, clean_prompt, LABEL, decoded)
    if kind == "llama3" and decode_cleans_up_spaces(tok):
        assert not any(raw_prefix_split), "the decode should have cleaned up spaces in every prompt"
    # the whole batch in one request, as OpenRLHF <= 0.9 sends it ...
    status, body = post(
        server.url + "/get_reward", {"query": queries, "prompts": prompts, "labels": [LABEL] * 9}
    )
    assert status == 200, body
    assert body["rewards"] == pytest.approx(expected, abs=1e-5)
    assert body["scores"] == body["rewards"]
    # ... and one rollout per request, as the current single-turn executor sends it
    for q, p, want in zip(queries[:3], prompts[:3], expected[:3]):
        status, one = post(server.url + "/get_reward", {"query": [q], "prompts": [p], "labels": [LABEL]})
        assert status == 200 and one["rewards"][0] == pytest.approx(want, abs=1e-5)
    if kind == "chatml":  # what scoring the markup as content gave: different rewards
        markup = [_score(server.url, p, LABEL, [q[len(p) :]])[0] for q, p in zip(queries, prompts)]
        assert max(abs(a - b) for a, b in zip(markup, expected)) > 1e-3


def test_empty_label_is_a_4xx_naming_the_label_key_flags(server):
    tok = make_policy_tokenizer("chatml")
    query, prompt, _ = openrlhf_rollout(tok, CONVERSATIONS[0], RESPONSES[0])
    for labels in ([""], ["   "], [None], [[]]):
        status, body = post(
            server.url + "/get_reward", {"query": [query], "prompts": [prompt], "labels": labels}
        )
        assert status == 400, (labels, body)
        assert "labels[0]" in body["error"] or "'labels[0]'" in body["error"]
        assert "--data.label_key" in body["error"] and "--label_key" in body["error"]
        assert "--reference-free" in body["error"]


def test_reference_free_server_scores_empty_labels_against_an_empty_reference(scorer):
    srv = build_server(scorer, "127.0.0.1", 0, reference_free=True)
    srv.start_background()
    try:
        tok = make_policy_tokenizer("chatml")
        query, prompt, decoded = openrlhf_rollout(tok, CONVERSATIONS[1], RESPONSES[1])
        status, body = post(srv.url + "/get_reward", {"query": [query], "prompts": [prompt], "labels": [""]})
        assert status == 200, body
        want = _score(srv.url, "Be brief .\nName a pet , please .", "", [decoded])
        assert body["rewards"] == pytest.approx(want, abs=1e-5)
        status, body = post(
            srv.url + "/get_reward", {"query": [query], "prompts": [prompt]}
        )  # no labels at all
        assert status == 200 and body["rewards"] == pytest.approx(want, abs=1e-5)
    finally:
        srv.stop()


def _big_openrlhf_body(n_rollouts: int, response_words: int) -> tuple[bytes, list[str]]:
    """``n_rollouts`` ChatML rollouts of ``response_words`` words (each word is one or more tokens)."""
    rng = random.Random(3)
    prompts, queries, responses = [], [], []
    for g in range(n_rollouts // 8):  # GRPO-like: 8 rollouts per prompt
        prompt = (
            f"<|im_start|>user\nQuestion {g}: {random_text(rng, 20, 40)}<|im_end|>\n<|im_start|>assistant\n"
        )
        for _ in range(8):
            response = " ".join(rng.choices(WORDS, k=response_words))
            prompts.append(prompt)
            queries.append(prompt + response + "<|im_end|>")
            responses.append(response)
    body = json.dumps({"query": queries, "prompts": prompts, "labels": [LABEL] * len(queries)}).encode()
    return body, responses


def test_a_1024_rollout_batch_of_8k_token_responses_passes_the_http_layer(server):
    """The body of 1,024 rollouts x 8,192 words is read (by length and chunked) and every rollout is parsed;
    scoring them all is left out to keep the test short (batch scoring is tested above)."""
    body, responses = _big_openrlhf_body(1024, 8192)
    assert len(body) > 32 * 1024 * 1024  # four times the former 8 MiB limit
    server.routes["/parse-only"] = lambda b: {
        "responses": [r.candidates[0] for r in server.service.parse_get_reward(b)]
    }
    try:
        host, port = server.server_address[:2]
        for chunked in (False, True):
            conn = http.client.HTTPConnection(host, port, timeout=120)
            if chunked:
                chunks = (body[i : i + (1 << 20)] for i in range(0, len(body), 1 << 20))
                conn.request(
                    "POST", "/parse-only", chunks, {"Content-Type": "application/json"}, encode_chunked=True
                )
            else:
                conn.request("POST", "/parse-only", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            got = json.loads(resp.read())
            conn.close()
            assert resp.status == 200, got
            assert got["responses"] == responses
    finally:
        del server.routes["/parse-only"]


def test_bodies_over_the_configured_limit_get_413_naming_the_flag(scorer):
    srv = build_server(scorer, "127.0.0.1", 0, max_body_bytes=1 << 20)
    srv.start_background()
    try:
        body, _ = _big_openrlhf_body(32, 8192)
        assert len(body) > 1 << 20
        status, payload = post(srv.url + "/get_reward", None, raw=body)
        assert status == 413 and "--max-body-bytes" in payload["error"] and str(1 << 20) in payload["error"]
        host, port = srv.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        try:
            conn.request(
                "POST", "/get_reward", chunks, {"Content-Type": "application/json"}, encode_chunked=True
            )
            resp = conn.getresponse()
            assert resp.status == 413 and "--max-body-bytes" in json.loads(resp.read())["error"]
        except (BrokenPipeError, ConnectionResetError):
            pytest.fail("the server closed the connection without answering 413")
        finally:
            conn.close()
        assert post(srv.url + "/score", {"prompt": "p", "reference": "r", "candidates": ["c"]})[0] == 200
    finally:
        srv.stop()


def test_health_lists_templates_and_serve_refuses_a_bad_template_spec(server, tmp_path):
    from megatron_polar.serve import main
    from tests.support.http_client import get

    status, body = get(server.url + "/health")
    assert (
        status == 200 and body["chat_templates"] == ["chatml", "llama3"] and body["reference_free"] is False
    )
    with pytest.raises(SystemExit, match="--chat-template .*not a built-in"):
        main(["--model", str(tmp_path), "--chat-template", str(tmp_path / "missing")])
