"""A minimal urllib client for the reward server, written to the wire protocols (tests, benchmark)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


def post(url: str, body: Any, timeout: float = 30.0, raw: bytes | None = None) -> tuple[int, dict]:
    """POST JSON (or ``raw`` bytes) and return ``(status, decoded JSON body)``, errors included."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.load(err)


def get(url: str, timeout: float = 30.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.load(err)


def openrlhf_get_reward(url: str, queries: list[str], prompts: list[str], labels: list[str]) -> list[float]:
    """What OpenRLHF's ``remote_rm_fn`` does: POST the batch, read ``rewards``."""
    status, body = post(url, {"query": queries, "prompts": prompts, "labels": labels})
    if status != 200:
        raise RuntimeError(f"reward server answered {status}: {body}")
    return body["rewards"]
