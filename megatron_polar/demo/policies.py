"""A synthetic policy pool: word n-gram "LLMs" trained on text that ships with Python.

Each policy is a word-level Markov chain over one source text (the Zen of Python, the CPython
licence, docstrings of a family of stdlib modules, keyword/builtin names) with its own order,
sampling temperature, top-k and length habits. Two policies may share a source and differ only in
sampling habits, like two checkpoints of one LLM in the paper's pool. Everything is deterministic
given the seed and built offline.
"""

from __future__ import annotations

import builtins
import codecs
import contextlib
import importlib
import inspect
import io
import keyword
import random
import re
import sysconfig
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_']*[A-Za-z0-9]|[A-Za-z]|[.,;:!?()]")

DOC_MODULES = {
    "docs_text": ["textwrap", "string", "difflib", "re", "json", "csv", "html", "unicodedata"],
    "docs_os": ["os", "shutil", "pathlib", "subprocess", "tempfile", "glob", "stat", "io"],
    "docs_math": ["math", "statistics", "random", "fractions", "decimal", "cmath", "numbers"],
    "docs_net": ["urllib.parse", "http.client", "socket", "ssl", "email.message", "smtplib", "ftplib"],
    "docs_data": ["collections", "itertools", "functools", "heapq", "bisect", "array", "operator"],
}


def _zen_text() -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        this = importlib.import_module("this")
    return codecs.decode(this.s, "rot13")


def _license_text() -> str:
    path = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if path.exists():
        return path.read_text(encoding="utf-8", errors="replace")
    return importlib.import_module("site")._Printer.__doc__ or "license"  # pragma: no cover


def _docstrings(modules: list[str]) -> str:
    parts = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:  # pragma: no cover - every listed module is stdlib
            continue
        parts.append(inspect.getdoc(mod) or "")
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(mod, attr, None))
            if doc and not doc.startswith(("int(", "str(", "float(", "Built-in")):
                parts.append(doc)
    return "\n".join(parts)


def _code_words_text() -> str:
    names = [n for n in dir(builtins) if not n.startswith("_")]
    rng = random.Random(0)
    lines = []
    for _ in range(400):
        lines.append(" ".join(rng.choice(keyword.kwlist + names) for _ in range(rng.randint(4, 10))) + " .")
    return "\n".join(lines)


@cache
def source_text(name: str) -> str:
    """The raw text of one named source (see :data:`SOURCES`)."""
    if name == "zen":
        return _zen_text()
    if name == "license":
        return _license_text()
    if name == "code":
        return _code_words_text()
    return _docstrings(DOC_MODULES[name])


SOURCES = ("zen", "license", "code", *DOC_MODULES)


@cache
def common_words(top: int = 300, min_sources: int = 3) -> frozenset[str]:
    """Words frequent in several sources (function words); policies avoid them to keep a style."""
    seen: Counter = Counter()
    for name in SOURCES:
        seen.update({w.lower() for w, _ in Counter(tokenize_words(source_text(name))).most_common(top)})
    return frozenset(w for w, k in seen.items() if k >= min_sources) | frozenset(
        w.capitalize() for w, k in seen.items() if k >= min_sources
    )


def tokenize_words(text: str) -> list[str]:
    """Words and punctuation of ``text``, in order."""
    return _WORD.findall(text)


def detokenize(words: list[str]) -> str:
    """Join words back into text (no space before punctuation)."""
    out = ""
    for w in words:
        if out and w not in ".,;:!?)" and not out.endswith("("):
            out += " "
        out += w
    return out


@dataclass(frozen=True)
class PolicySpec:
    """Sampling habits of one synthetic policy.

    Attributes:
        name: policy id written into the rollouts.
        source: key of :data:`SOURCES` the n-gram model is trained on.
        order: n-gram context length in words (1 or 2).
        temperature: divides the log-counts before sampling (higher = more random).
        top_k: sample among the k most frequent continuations only.
        min_words, max_words: response length range in words.
        vocab_words: the chain only uses the source's most frequent words (a policy's "style").
    """

    name: str
    source: str
    order: int = 1
    temperature: float = 1.0
    top_k: int = 50
    min_words: int = 10
    max_words: int = 24
    vocab_words: int = 120


class MarkovPolicy:
    """A word n-gram sampler with temperature and top-k."""

    def __init__(self, spec: PolicySpec):
        self.spec = spec
        words = tokenize_words(source_text(spec.source))
        shared = common_words()
        ranked = [w for w, _ in Counter(words).most_common() if w not in shared or not w[0].isalpha()]
        keep = set(ranked[: spec.vocab_words])
        words = [w for w in words if w in keep]
        self.vocab = sorted(set(words))
        table: dict[tuple[str, ...], Counter] = defaultdict(Counter)
        for i in range(len(words) - spec.order):
            table[tuple(words[i : i + spec.order])][words[i + spec.order]] += 1
        self.table = {k: c.most_common(spec.top_k) for k, c in table.items()}
        self.starts = sorted(k for k in self.table if k[0][0].isupper()) or sorted(self.table)

    def _next(self, rng: random.Random, state: tuple[str, ...]) -> str | None:
        options = self.table.get(state)
        if not options:
            return None
        weights = [count ** (1.0 / self.spec.temperature) for _, count in options]
        return rng.choices([w for w, _ in options], weights=weights)[0]

    def generate(self, rng: random.Random, prompt: str) -> str:
        """One response to ``prompt``: continues from a prompt word the policy knows, else a start."""
        s = self.spec
        known = [(w,) for w in tokenize_words(prompt) if (w,) in self.table] if s.order == 1 else []
        state = rng.choice(known) if known else rng.choice(self.starts)
        out = list(state)
        target = rng.randint(s.min_words, s.max_words)
        while len(out) < target:
            nxt = self._next(rng, state)
            if nxt is None:
                state = rng.choice(self.starts)
                out.extend(state)
                continue
            out.append(nxt)
            state = (*state[1:], nxt)
        return detokenize(out)


# The pool. Held-out policies (validation only) include an unseen source and an unseen sampling
# habit of a seen source, so validation asks whether the RM learned to compare with the reference.
POOL = (
    PolicySpec("zen-greedy", "zen", order=2, temperature=0.5, top_k=3, min_words=8, max_words=14),
    PolicySpec("license-base", "license", order=2, temperature=1.0, top_k=40, min_words=14, max_words=22),
    PolicySpec("license-hot", "license", order=1, temperature=1.6, top_k=200, min_words=24, max_words=34),
    PolicySpec("code-babbler", "code", order=1, temperature=1.0, top_k=50, min_words=5, max_words=10),
    PolicySpec("text-docs", "docs_text", order=2, temperature=0.9, top_k=20, min_words=12, max_words=20),
    PolicySpec("os-docs-long", "docs_os", order=1, temperature=1.2, top_k=80, min_words=26, max_words=36),
    PolicySpec("math-docs-short", "docs_math", order=2, temperature=0.8, top_k=10, min_words=5, max_words=9),
    PolicySpec("data-docs", "docs_data", order=1, temperature=1.0, top_k=30, min_words=16, max_words=24),
    PolicySpec("net-docs", "docs_net", order=2, temperature=1.0, top_k=30, min_words=10, max_words=18),
    PolicySpec("zen-hot", "zen", order=1, temperature=1.5, top_k=100, min_words=18, max_words=26),
)
HOLDOUT = ("net-docs", "zen-hot")

_PROMPT_TEMPLATES = (
    "Continue the text: {w}",
    "Write a sentence about {w}.",
    "Explain {w} briefly.",
    "Say something about {w}",
)


def make_prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct prompts whose topic words come from all sources (policies may pick them up)."""
    rng = random.Random(seed)
    pool = sorted({w for s in SOURCES for w in tokenize_words(source_text(s)) if len(w) > 3 and w.isalpha()})
    prompts: list[str] = []
    seen = set()
    while len(prompts) < n:
        p = rng.choice(_PROMPT_TEMPLATES).format(w=" ".join(rng.sample(pool, 2)))
        if p not in seen:
            seen.add(p)
            prompts.append(p)
    return prompts


def iter_rollouts(
    prompts: list[str], responses_per_policy: int, seed: int, pool: tuple[PolicySpec, ...] = POOL
) -> Iterator[dict]:
    """Rollout rows ``{"prompt", "policy", "response"}`` for every prompt, policy and sample."""
    policies = [MarkovPolicy(spec) for spec in pool]
    for i, prompt in enumerate(prompts):
        for j, policy in enumerate(policies):
            rng = random.Random(seed * 1_000_003 + i * 101 + j)
            for _ in range(responses_per_policy):
                yield {"prompt": prompt, "policy": policy.spec.name, "response": policy.generate(rng, prompt)}
