"""Preference evaluation with the paper's protocol (POLAR section 4.2).

Each row holds a prompt and at least three responses ranked best first:
``{"prompt", "responses": [best, second, third, ...], "category"?}``. The best response is the
reference; the model is right when it scores the second above the third (a tie counts as wrong).
Accuracy is reported per category and overall.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from megatron_polar.scoring.requests import RequestError, ScoreRequest, as_text, as_text_list
from megatron_polar.scoring.scorer import PolarScorer

DEFAULT_CATEGORY = "all"


def parse_ranked_row(obj: Any) -> tuple[ScoreRequest, str]:
    """The scoring request (reference = best, candidates = 2nd and 3rd) and the category of one row."""
    if not isinstance(obj, dict):
        raise RequestError(f"row must be a JSON object, got {type(obj).__name__}")
    for key in ("prompt", "responses"):
        if key not in obj:
            raise RequestError(f"missing field '{key}'")
    responses = as_text_list(obj["responses"], "responses")
    if len(responses) < 3:
        raise RequestError(f"'responses' needs at least 3 ranked responses, got {len(responses)}")
    category = obj.get("category", DEFAULT_CATEGORY)
    if not isinstance(category, str):
        raise RequestError(f"'category' must be a string, got {type(category).__name__}")
    wrapper = obj.get("wrapper")
    request = ScoreRequest(
        prompt=as_text(obj["prompt"], "prompt"),
        references=[responses[0]],
        candidates=responses[1:3],
        wrapper=wrapper if isinstance(wrapper, str) else None,
    )
    return request, category


def _accuracy(correct: int, n: int) -> dict:
    return {"n": n, "correct": correct, "accuracy": correct / n if n else float("nan")}


def evaluate_preferences(
    scorer: PolarScorer, rows: Iterable[Any], chunk_rows: int = 256, margins: list[float] | None = None
) -> dict:
    """Per-category and overall accuracy of ``scorer`` on ranked ``rows`` (see the module docstring).

    Rows may be dicts (validated with :func:`parse_ranked_row`) or ``(ScoreRequest, category)`` tuples.
    Returns ``{"overall": {n, correct, accuracy}, "categories": {name: {...}}, "margins": {...}}``.
    ``margins``, when given, receives each row's ``score(2nd) - score(3rd)`` in row order (so a caller
    that needs them, such as the demo's tie count, neither parses nor scores the rows a second time).
    """
    counts: dict[str, list[int]] = {}
    margins = [] if margins is None else margins
    chunk: list[tuple[ScoreRequest, str]] = []

    def run() -> None:
        results = scorer.score_requests([req for req, _ in chunk], normalize=False)
        for (_, category), (second, third) in zip(chunk, results):
            margin = second.reward - third.reward
            margins.append(margin)
            c = counts.setdefault(category, [0, 0])
            c[0] += margin > 0
            c[1] += 1
        chunk.clear()

    for row in rows:
        chunk.append(row if isinstance(row, tuple) else parse_ranked_row(row))
        if len(chunk) >= chunk_rows:
            run()
    if chunk:
        run()
    correct, total = sum(c for c, _ in counts.values()), sum(n for _, n in counts.values())
    return {
        "protocol": "reference = best response; correct when score(2nd) > score(3rd)",
        "model": scorer.name,
        "overall": _accuracy(correct, total),
        "categories": {k: _accuracy(*counts[k]) for k in sorted(counts)},
        "mean_margin": sum(margins) / len(margins) if margins else float("nan"),
    }


def format_table(report: dict) -> str:
    """The report as a fixed-width table: category, n, accuracy, then the overall row."""
    rows = [(name, r["n"], r["accuracy"]) for name, r in report["categories"].items()]
    rows.append(("overall", report["overall"]["n"], report["overall"]["accuracy"]))
    width = max(8, *(len(name) for name, _, _ in rows))
    lines = [f"{'category':<{width}}  {'n':>7}  {'accuracy':>8}", "-" * (width + 19)]
    for i, (name, n, acc) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * (width + 19))
        lines.append(f"{name:<{width}}  {n:>7d}  {acc:>8.4f}")
    return "\n".join(lines)
