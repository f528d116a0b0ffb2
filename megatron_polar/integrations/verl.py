"""verl batch reward function that scores rollouts on a megatron_polar reward server (``POST /score``).

verl's ``BatchRewardManager`` (``reward_model.reward_manager=batch``) decodes every response with
``skip_special_tokens=True`` and calls, once per batch::

    compute_score_batch(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=..., **reward_kwargs)

with ``ground_truths[i]`` = the row's ``reward_model.ground_truth`` and ``extra_infos[i]`` = its
``extra_info`` dict. The prompt is not among the arguments, so it travels in ``extra_info`` (key
``prompt`` by default, a string or a message list, as in the POLAR release's verl recipe). Rollouts with
the same prompt and reference go to the server as one request with all of them as candidates (the
prompt and reference are tokenized once and the candidates share one row); groups are sent
concurrently and the rewards come back in the input order.

Configure it with::

    reward_model.reward_manager=batch
    custom_reward_function.path=pkg://megatron_polar.integrations.verl   # or this file's path
    custom_reward_function.name=compute_score_batch
    +custom_reward_function.reward_kwargs.url=http://rm-host:8000

Only the standard library is used, so the module loads in any verl environment with this package
installed (or from its file path).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


class RewardServerError(RuntimeError):
    """The reward server refused a request or could not be reached after the retries."""


def _as_text(value: Any, what: str) -> str:
    """A string, or the ``"\\n"``-join of a message list's contents (POLAR's flattening)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(str(m["content"]) for m in value)
    raise ValueError(
        f"{what} must be a string or a list of {{'role', 'content'}} messages, got {value!r:.80}"
    )


def _references(ground_truth: Any, i: int, reference_free: bool) -> tuple[str, ...]:
    what = f"ground_truths[{i}] (the row's reward_model.ground_truth)"
    if hasattr(ground_truth, "tolist"):  # verl stores non-tensor fields in numpy object arrays
        ground_truth = ground_truth.tolist()
    if ground_truth is None:
        ground_truth = ""
    if isinstance(ground_truth, list) and ground_truth and all(isinstance(g, str) for g in ground_truth):
        refs = tuple(ground_truth)  # several references, averaged by the server
    else:
        refs = (_as_text(ground_truth, what),)
    if not reference_free and any(not r.strip() for r in refs):
        raise ValueError(
            f"{what} is empty: POLAR scores a response against a reference; put each prompt's reference "
            "response in reward_model.ground_truth, or pass reward_kwargs reference_free=True"
        )
    return refs


def _prompt(extra_info: Any, i: int, prompt_key: str) -> str:
    if not isinstance(extra_info, dict) or prompt_key not in extra_info:
        raise ValueError(
            f"extra_infos[{i}] has no {prompt_key!r}: verl's batch reward manager does not pass the prompt, "
            f"so store it in each row's extra_info[{prompt_key!r}] (a string or the message list) when "
            "preparing the data, or name another key with reward_kwargs prompt_key=..."
        )
    value = extra_info[prompt_key]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return _as_text(value, f"extra_infos[{i}][{prompt_key!r}]")


def _post(url: str, body: dict, timeout_s: float, max_retries: int, retry_delay_s: float) -> dict:
    """POST JSON; retries connection errors and 5xx answers, raises at once on a 4xx."""
    data = json.dumps(body).encode()
    last: Exception | None = None
    for attempt in range(max_retries + 1):
        req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            with err:
                detail = err.read().decode(errors="replace")[:500]
            if err.code < 500:
                raise RewardServerError(f"{url} answered {err.code}: {detail}") from None
            last = RewardServerError(f"{url} answered {err.code}: {detail}")
        except (urllib.error.URLError, OSError) as err:
            last = err
        if attempt < max_retries:
            time.sleep(retry_delay_s * (attempt + 1))
    raise RewardServerError(f"no answer from {url} after {max_retries + 1} attempts: {last}")


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    *,
    url: str | None = None,
    prompt_key: str = "prompt",
    timeout_s: float = 600.0,
    max_retries: int = 3,
    retry_delay_s: float = 1.0,
    max_concurrency: int = 8,
    strip_thinking: bool = True,
    reference_free: bool = False,
    wrapper: str | None = None,
    **_ignored: Any,
) -> list[float]:
    """One POLAR reward per rollout, in input order (verl's batch reward function signature).

    Args:
        data_sources: per rollout; unused (verl passes them), all rollouts go to one server.
        solution_strs: the decoded responses.
        ground_truths: the references (a string, a message list, or a list of strings).
        extra_infos: per-row dicts holding the prompt under ``prompt_key``.
        url: the server, with or without ``/score`` (default ``$POLAR_RM_URL`` or ``http://127.0.0.1:8000``).
        timeout_s, max_retries, retry_delay_s: per request; 4xx answers are not retried.
        max_concurrency: requests in flight at once (one per prompt group).
        strip_thinking: score only what follows the first ``</think>`` (stripped), as the POLAR release's
            function does with ``<think>...</think>``.
        reference_free: allow empty references instead of raising.
        wrapper: sent as the request's ``wrapper`` (``"pretrain"`` drops the newline after the prompt).
    """
    n = len(solution_strs)
    if len(ground_truths) != n or (extra_infos is not None and len(extra_infos) != n):
        raise ValueError(
            f"{n} solution_strs but {len(ground_truths)} ground_truths and "
            f"{len(extra_infos) if extra_infos is not None else 0} extra_infos"
        )
    infos = list(extra_infos) if extra_infos is not None else [None] * n
    base = (url or os.environ.get("POLAR_RM_URL") or DEFAULT_URL).rstrip("/")
    endpoint = base if base.endswith("/score") else base + "/score"

    groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
    for i in range(n):
        key = (_prompt(infos[i], i, prompt_key), _references(ground_truths[i], i, reference_free))
        groups.setdefault(key, []).append(i)

    def response(i: int) -> str:
        text = solution_strs[i]
        if strip_thinking and "</think>" in text:  # the prompt may hold the opening <think> (Qwen3)
            return text.split("</think>", 1)[1].strip()
        return text

    def score(item: tuple[tuple[str, tuple[str, ...]], list[int]]) -> tuple[list[int], list[float]]:
        (prompt, refs), members = item
        body: dict[str, Any] = {
            "prompt": prompt,
            "references": list(refs),
            "candidates": [response(i) for i in members],
        }
        if wrapper is not None:
            body["wrapper"] = wrapper
        rewards = _post(endpoint, body, timeout_s, max_retries, retry_delay_s)["rewards"]
        if len(rewards) != len(members):
            raise RewardServerError(
                f"{endpoint} returned {len(rewards)} rewards for {len(members)} candidates"
            )
        return members, [float(r) for r in rewards]

    out = [0.0] * n
    with ThreadPoolExecutor(max_workers=max(1, min(max_concurrency, len(groups) or 1))) as pool:
        for members, rewards in pool.map(score, groups.items()):
            for i, r in zip(members, rewards):
                out[i] = r
    return out
