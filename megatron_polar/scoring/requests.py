"""What a scoring request holds, and its validation from JSON-like objects.

The batch CLI, the reward server and calibration all read requests through :func:`parse_score_request`
and :func:`parse_row`, so a malformed input gets the same message everywhere: a :class:`RequestError`
naming the field and what was wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_polar.data.format import flatten_messages
from megatron_polar.utils.errors import RequestError

Text = str | list[dict]  # a plain string or a list of {"role", "content"} messages (flattened)


@dataclass
class ScoreRequest:
    """Score every candidate against every reference for one prompt (strings already flattened).

    Attributes:
        prompt: the prompt text ``P``.
        references: one or more reference trajectories; rewards are averaged over them.
        candidates: the trajectories to score.
        wrapper: ``"pretrain"`` drops the ``"\\n"`` after the prompt (released format), else None.
    """

    prompt: str
    references: list[str]
    candidates: list[str]
    wrapper: str | None = None


def as_text(value: Any, field: str) -> str:
    """A string, or the ``"\\n"``-join of a message list; :class:`RequestError` naming ``field`` otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        try:
            return flatten_messages(value)
        except ValueError as exc:
            raise RequestError(f"'{field}': {exc}") from exc
    raise RequestError(f"'{field}' must be a string or a list of messages, got {type(value).__name__}")


def as_text_list(value: Any, field: str) -> list[str]:
    """A non-empty list of texts (each a string or a message list)."""
    if not isinstance(value, list):
        raise RequestError(f"'{field}' must be a list, got {type(value).__name__}")
    if not value:
        raise RequestError(f"'{field}' must not be empty")
    return [as_text(v, f"{field}[{i}]") for i, v in enumerate(value)]


def _references(obj: dict) -> list[str]:
    if "references" in obj and "reference" in obj:
        raise RequestError("give either 'reference' or 'references', not both")
    if "references" in obj:
        return as_text_list(obj["references"], "references")
    if "reference" in obj:
        return [as_text(obj["reference"], "reference")]
    raise RequestError("missing field 'reference' (or 'references')")


def _wrapper(obj: dict) -> str | None:
    wrapper = obj.get("wrapper")
    if wrapper is not None and not isinstance(wrapper, str):
        raise RequestError(f"'wrapper' must be a string or null, got {type(wrapper).__name__}")
    return wrapper


def parse_score_request(obj: Any) -> ScoreRequest:
    """``{"prompt", "reference" | "references", "candidates", "wrapper"?}`` as a :class:`ScoreRequest`."""
    if not isinstance(obj, dict):
        raise RequestError(f"request must be a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj:
        raise RequestError("missing field 'prompt'")
    if "candidates" not in obj:
        raise RequestError("missing field 'candidates'")
    return ScoreRequest(
        prompt=as_text(obj["prompt"], "prompt"),
        references=_references(obj),
        candidates=as_text_list(obj["candidates"], "candidates"),
        wrapper=_wrapper(obj),
    )


def parse_row(obj: Any) -> ScoreRequest:
    """A JSONL row: a score request, or a training triple ``{"prompt", "reference", "chosen", "rejected"}``
    (scored as the candidates ``[chosen, rejected]``)."""
    if isinstance(obj, dict) and "candidates" not in obj and ("chosen" in obj or "rejected" in obj):
        for key in ("chosen", "rejected"):
            if key not in obj:
                raise RequestError(f"training triple without '{key}'")
        obj = {**obj, "candidates": [obj["chosen"], obj["rejected"]]}
    return parse_score_request(obj)
