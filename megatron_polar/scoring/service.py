"""The reward service behind the HTTP server: request validation, encoding, batching, responses.

Kept free of HTTP so that the protocols can be tested and reused directly. Two protocols:

* native ``/score``: ``{"prompt", "reference" | "references", "candidates", "wrapper"?, "detail"?}`` ->
  ``{"rewards": [...], "truncated": [...]}`` (plus per-candidate spread with ``"detail": true``);
* OpenRLHF's remote reward model ``/get_reward``: ``{"query": [str], "prompts": [str], "labels": [...]}``
  -> ``{"rewards", "scores", "extra_logs"}``. ``prompts[i]`` is the chat-templated prompt and ``query[i]``
  the decoded prompt + response with the template's markup and the policy's EOS; both are taken apart by
  :class:`~megatron_polar.scoring.chat_template.RolloutParser` into POLAR's prompt text (contents
  ``"\n"``-joined) and the bare response. ``labels[i]`` is the reference (a string, a message list, or
  a list of strings for several references); an empty one is refused unless the service is
  reference-free.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from megatron_polar.scoring.batcher import BatcherClosed, DynamicBatcher
from megatron_polar.scoring.chat_template import RolloutParser
from megatron_polar.scoring.requests import RequestError, ScoreRequest, as_text, parse_score_request
from megatron_polar.scoring.scorer import CandidateScore, EncodedRequest, PolarScorer

MISMATCH_POLICIES = ("error", "whole-query")

EMPTY_LABEL_HELP = (
    "POLAR scores a response against a reference, and OpenRLHF sends an empty label when no label key is "
    "set: pass --data.label_key FIELD (OpenRLHF >= 0.10.2; --label_key before) naming the dataset field "
    "that holds each prompt's reference response, or start the server with --reference-free to score "
    "against an empty reference"
)


class RewardService:
    """Validates requests, encodes them on the caller's thread and scores them through the batcher.

    Args:
        scorer: owns the model and tokenizer; only the batcher's worker runs its forward pass.
        batcher: the dynamic batcher wrapping ``scorer.forward_sequences``.
        on_prompt_mismatch: what ``/get_reward`` does with a query in which its prompt cannot be found
            (neither by the chat template nor up to whitespace): ``error`` (400 naming the index) or
            ``whole-query`` (score the whole query as the response).
        request_timeout_s: how long a request waits for its rewards before a 503.
        rollout_parser: takes chat templates off ``/get_reward`` texts (default: ChatML and Llama-3).
        reference_free: score empty labels against an empty reference instead of refusing them.
    """

    def __init__(
        self,
        scorer: PolarScorer,
        batcher: DynamicBatcher,
        on_prompt_mismatch: str = "error",
        request_timeout_s: float = 300.0,
        rollout_parser: RolloutParser | None = None,
        reference_free: bool = False,
    ) -> None:
        if on_prompt_mismatch not in MISMATCH_POLICIES:
            raise ValueError(f"on_prompt_mismatch must be one of {MISMATCH_POLICIES}")
        self.scorer = scorer
        self.batcher = batcher
        self.on_prompt_mismatch = on_prompt_mismatch
        self.request_timeout_s = request_timeout_s
        self.rollout_parser = rollout_parser or RolloutParser()
        self.reference_free = reference_free
        self.requests_served = 0
        self._lock = threading.Lock()

    def _submit(self, requests: list[ScoreRequest]) -> tuple[list[EncodedRequest], Future]:
        encoded = [self.scorer.encode(r) for r in requests]
        try:
            future = self.batcher.submit([s for e in encoded for s in e.sequences])
        except BatcherClosed as exc:
            raise RequestError("the server is shutting down", status=503) from exc
        return encoded, future

    def _finish(self, encoded: list[EncodedRequest], future: Future) -> list[list[CandidateScore]]:
        try:
            raw = future.result(timeout=self.request_timeout_s)
        except FutureTimeout as exc:
            raise RequestError(
                f"no result within {self.request_timeout_s:.0f}s; server overloaded", 503
            ) from exc
        out, pos = [], 0
        for e in encoded:
            out.append(self.scorer.finish(e, raw[pos : pos + len(e.sequences)]))
            pos += len(e.sequences)
        with self._lock:
            self.requests_served += 1
        return out

    def score(self, body: Any) -> dict:
        """The native ``/score`` endpoint."""
        with self.batcher.incoming():  # parse and encode, then queue: the batcher may wait for us
            request = parse_score_request(body)
            detail = body.get("detail", False)
            if not isinstance(detail, bool):
                raise RequestError(f"'detail' must be a boolean, got {type(detail).__name__}")
            pending = self._submit([request])
        [scores] = self._finish(*pending)
        response: dict[str, Any] = {
            "rewards": [s.reward for s in scores],
            "truncated": [s.truncated for s in scores],
        }
        if detail:
            response["detail"] = [
                {
                    "per_reference": s.per_reference,
                    "std": s.std,
                    "min": s.min,
                    "max": s.max,
                    "tokens": s.num_tokens,
                }
                for s in scores
            ]
        return response

    def get_reward(self, body: Any) -> dict:
        """OpenRLHF's ``/get_reward``: one reward per query."""
        with self.batcher.incoming():
            requests = self.parse_get_reward(body)
            pending = self._submit(requests)
        scores = self._finish(*pending)
        rewards = [s[0].reward for s in scores]
        truncated = [float(s[0].truncated) for s in scores]  # per query, so trainers can average it
        return {"rewards": rewards, "scores": rewards, "extra_logs": {"truncated": truncated}}

    def parse_get_reward(self, body: Any) -> list[ScoreRequest]:
        """Validate an OpenRLHF body and turn each rollout into a POLAR :class:`ScoreRequest`."""
        if not isinstance(body, dict):
            raise RequestError(f"request must be a JSON object, got {type(body).__name__}")
        lists = {}
        for key in ("query", "prompts", "labels"):
            if key not in body:
                if key == "labels" and self.reference_free:
                    continue
                raise RequestError(
                    f"missing field '{key}'" + (f": {EMPTY_LABEL_HELP}" if key == "labels" else "")
                )
            value = body[key]
            if not isinstance(value, list):
                raise RequestError(f"'{key}' must be a list, got {type(value).__name__}")
            if not value:
                raise RequestError(f"'{key}' must not be empty")
            lists[key] = value
        n = len(lists["query"])
        lists.setdefault("labels", [""] * n)
        for key in ("prompts", "labels"):
            if len(lists[key]) != n:
                raise RequestError(f"'{key}' has {len(lists[key])} items but 'query' has {n}")
        return [
            self._openrlhf_request(i, q, p, lab)
            for i, (q, p, lab) in enumerate(zip(lists["query"], lists["prompts"], lists["labels"]))
        ]

    def _references(self, i: int, label: Any) -> list[str]:
        if label is None:
            label = ""
        if isinstance(label, list) and label and all(isinstance(x, str) for x in label):
            references = list(label)  # several references for this prompt
        else:
            references = [as_text(label, f"labels[{i}]")]
        if not self.reference_free and any(not r.strip() for r in references):
            raise RequestError(f"'labels[{i}]' is empty: {EMPTY_LABEL_HELP}")
        return references

    def _openrlhf_request(self, i: int, query: Any, prompt: Any, label: Any) -> ScoreRequest:
        if not isinstance(query, str):
            raise RequestError(f"'query[{i}]' must be a string, got {type(query).__name__}")
        if not isinstance(prompt, str):
            raise RequestError(f"'prompts[{i}]' must be a string, got {type(prompt).__name__}")
        references = self._references(i, label)
        rollout = self.rollout_parser.split(query, prompt)
        if rollout is None:
            if self.on_prompt_mismatch != "whole-query":
                raise RequestError(
                    f"'query[{i}]' does not contain 'prompts[{i}]': neither a known chat template "
                    f"({', '.join(self.rollout_parser.names)}; add yours with --chat-template) nor a "
                    "prefix up to whitespace locates the response (start the server with "
                    "--on-prompt-mismatch whole-query to score the whole query as the response instead)"
                )
            parsed = self.rollout_parser.split(prompt, prompt)  # the prompt's text without its template
            text = parsed.prompt if parsed is not None else prompt
            return ScoreRequest(prompt=text, references=references, candidates=[query])
        return ScoreRequest(prompt=rollout.prompt, references=references, candidates=[rollout.response])

    def health(self) -> dict:
        """``GET /health``."""
        return {
            "status": "ok",
            **self.scorer.describe(),
            "max_batch": self.batcher.max_batch,
            "max_wait_ms": self.batcher.max_wait_s * 1000.0,
            "pending_sequences": self.batcher.pending,
            "batches": self.batcher.batches,
            "sequences": self.batcher.sequences,
            "requests": self.requests_served,
            "chat_templates": self.rollout_parser.names,
            "reference_free": self.reference_free,
        }
