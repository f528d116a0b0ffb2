"""Take a policy's chat template off the text an RL trainer sends, recovering POLAR's prompt and response.

OpenRLHF sends ``prompts[i]`` = the chat-templated prompt and ``query[i]`` = the *decoded* prompt +
response ids, with the template's markup and the policy's EOS. POLAR scores plain text: the prompt is
the ``"\\n"``-join of the message contents (roles dropped) and the response is what the policy wrote.

A :class:`ChatTemplate` learns a template's layout by rendering it with sentinel message contents: each
conversation shape (an optional system message, then alternating user/assistant turns ending with a
user turn, with the generation prompt) becomes a regular expression whose groups are the contents. A
prompt is parsed by the shape with the most turns that matches it. The response starts after the
prompt's final literal (for ChatML ``<|im_end|>\\n<|im_start|>assistant\\n``) located in ``query`` by
occurrence count, not by string prefix, because a tokenizer that cleans up spaces on decode (Llama-3's
``clean_up_tokenization_spaces``) changes the prompt's text inside ``query``; trailing end-of-turn and
EOS markers are removed from it.

ChatML and Llama-3 are built in; any other template comes from a tokenizer directory
(``tokenizer_config.json``'s ``chat_template`` or ``chat_template.jinja``) or a Jinja file.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from megatron_polar.utils.errors import ChatTemplateError
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

# The ChatML layout (Qwen, InternLM2-chat, ...) without any default system message.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Meta-Llama-3-Instruct's documented template: BOS, a header per message, trimmed content, <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

BUILTIN = {
    "chatml": (
        CHATML_TEMPLATE,
        {"bos_token": "", "eos_token": "<|im_end|>"},
        ("<|im_end|>", "<|endoftext|>"),
    ),
    "llama3": (
        LLAMA3_TEMPLATE,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
    ),
}

# EOS texts of common policies: removed from the end of any response (the released POLAR pipeline would
# drop these special tokens on decode anyway).
COMMON_EOS = (
    "</s>",
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<eos>",
    "<end_of_turn>",
)

_CONTENT = "\ue000{}\ue001"  # private-use code points: survive trim/strip, never in real text
_CONTENT_RE = re.compile("\ue000(\\d+)\ue001")
# What strftime_now() renders as (the date in Llama-3.1 templates): matches any text within a line.
_DATE = "\ue002"
# What an unknown special token renders as (the BOS and EOS of a bare Jinja file): matches one token-like
# text such as <s>, </s>, <|begin_of_text|> or [BOS], or nothing.
_TOKEN = "\ue003"
_WILDCARDS = {_DATE: "[^\n]*?", _TOKEN: r"(?:<[^<>\s]{1,64}>|\[[^\[\]\s]{1,64}\])?"}
_WILDCARD_RE = re.compile("([\ue002\ue003])")
_MAX_TURNS = 64


@dataclass(frozen=True)
class _Shape:
    """One conversation shape rendered with sentinels: its regex and the literal that ends the prompt."""

    regex: re.Pattern[str]
    literals: tuple[str, ...]  # text between contents; literals[-1] ends the prompt
    required: tuple[tuple[str, int], ...]  # (literal, count) a matching prompt must contain


def _environment() -> ImmutableSandboxedEnvironment:
    """A Jinja environment with the options and helpers chat templates expect (as transformers sets up)."""

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: _DATE
    return env


def _token_text(value: Any) -> str:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


class ChatTemplate:
    """A chat template learned from sentinel renderings (see the module docstring).

    Args:
        source: the Jinja template text.
        name: where it came from (logs, errors, ``/health``).
        special_tokens: ``bos_token`` / ``eos_token`` strings the template may use; a missing one matches
            one token-like text (``<s>``, ``<|begin_of_text|>``, ``[BOS]``) or nothing in prompts.
        end_markers: strings that end a response (EOS, end of turn); stripped from its end, with the
            template's own end of an assistant turn and :data:`COMMON_EOS`.
    """

    def __init__(
        self,
        source: str,
        name: str,
        special_tokens: dict[str, str] | None = None,
        end_markers: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.special_tokens = {"bos_token": _TOKEN, "eos_token": _TOKEN, **(special_tokens or {})}
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise ChatTemplateError(f"{name}: invalid Jinja at line {exc.lineno}: {exc.message}") from exc
        markers = {*end_markers, *COMMON_EOS, self.special_tokens["eos_token"]}
        footer = self._assistant_footer()
        markers.update({footer, footer.strip()})
        self.end_markers = tuple(
            sorted((m for m in markers if m and not _WILDCARD_RE.search(m)), key=len, reverse=True)
        )
        if self._shape(False, 1) is None and self._shape(True, 1) is None:
            raise ChatTemplateError(
                f"{name}: rendering a one-message conversation failed or lost its content"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def builtin(cls, name: str) -> ChatTemplate:
        """``chatml`` or ``llama3``."""
        source, special, markers = BUILTIN[name]
        return cls(source, name, special, markers)

    @classmethod
    def from_file(cls, path: str | Path) -> ChatTemplate:
        """A Jinja template file; its BOS and EOS are unknown and match any text (a tokenizer directory
        names them)."""
        path = Path(path)
        return cls(path.read_text(encoding="utf-8"), str(path))

    @classmethod
    def from_tokenizer_dir(cls, directory: str | Path) -> ChatTemplate:
        """The ``chat_template`` of an HF tokenizer directory, with its BOS and EOS tokens."""
        directory = Path(directory)
        config_path = directory / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ChatTemplateError(f"{config_path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        source = config.get("chat_template")
        if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
            source = named.get("default")
        jinja_file = directory / "chat_template.jinja"
        if not source and jinja_file.is_file():
            source = jinja_file.read_text(encoding="utf-8")
        if not isinstance(source, str) or not source:
            raise ChatTemplateError(
                f"{directory}: no chat template (neither 'chat_template' in tokenizer_config.json "
                "nor chat_template.jinja)"
            )
        special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token")}
        markers = tuple(t for t in (_token_text(config.get("pad_token")),) if t)
        return cls(source, str(directory), special, markers)

    @classmethod
    def load(cls, spec: str) -> ChatTemplate:
        """A built-in name, a tokenizer directory or a Jinja file (the server's ``--chat-template``)."""
        if spec in BUILTIN:
            return cls.builtin(spec)
        path = Path(spec)
        if path.is_dir():
            return cls.from_tokenizer_dir(path)
        if path.is_file():
            return cls.from_file(path)
        raise ChatTemplateError(
            f"--chat-template {spec!r}: not a built-in ({', '.join(BUILTIN)}), a tokenizer directory "
            "or a Jinja file"
        )

    # ------------------------------------------------------------------ learning the layout
    def _render(self, roles: list[str], generation_prompt: bool) -> str | None:
        messages = [{"role": r, "content": _CONTENT.format(i)} for i, r in enumerate(roles)]
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=generation_prompt, **self.special_tokens
            )
        except Exception:  # noqa: BLE001 - a template may refuse a shape (raise_exception): skip it
            return None

    @staticmethod
    def _roles(system: bool, turns: int) -> list[str]:
        return (["system"] if system else []) + ["user", "assistant"] * (turns - 1) + ["user"]

    def _assistant_footer(self) -> str:
        """What the template writes after an assistant message's content (its end of turn)."""
        text = self._render(["user", "assistant"], False)
        if text is None or _CONTENT.format(1) not in text:
            return ""
        return text.split(_CONTENT.format(1), 1)[1]

    @functools.lru_cache(maxsize=2 * _MAX_TURNS)  # noqa: B019 - one template object per server
    def _shape(self, system: bool, turns: int) -> _Shape | None:
        roles = self._roles(system, turns)
        text = self._render(roles, True)
        if text is None:
            return None
        parts = _CONTENT_RE.split(text)
        literals, indices = parts[0::2], [int(i) for i in parts[1::2]]
        if indices != list(range(len(roles))):
            return None  # the template drops or reorders messages: this shape cannot be recovered
        pieces = [_WILDCARD_RE.split(lit) for lit in literals]
        pattern = "(.*?)".join("".join(_WILDCARDS.get(p) or re.escape(p) for p in lit) for lit in pieces)
        counts: dict[str, int] = {}
        for lit in pieces:
            for piece in lit:
                if piece and piece not in _WILDCARDS:
                    counts[piece] = counts.get(piece, 0) + 1
        return _Shape(re.compile(pattern, re.DOTALL), tuple(literals), tuple(counts.items()))

    def _match(self, system: bool, turns: int, prompt: str) -> tuple[list[str], str] | None:
        shape = self._shape(system, turns)
        if shape is None or any(prompt.count(lit) < n for lit, n in shape.required):
            return None  # the count check keeps a failing regex from backtracking over many turns
        m = shape.regex.fullmatch(prompt)
        return (list(m.groups()), shape.literals[-1]) if m else None

    # ------------------------------------------------------------------ use
    def parse_prompt(self, prompt: str) -> tuple[list[str], str] | None:
        """The message contents of a templated prompt and the literal that ends it, or None.

        Shapes are tried with more and more turns: a shape with fewer turns than the prompt also matches
        (its groups swallow whole turns), one with more does not, so the last level that matches is the
        prompt's, and a prompt that no one-turn shape matches is not in this template. At one level, with and without a system message may both match; the one whose template
        text covers more of the prompt wins, so that a system message the template inserts by itself
        (Qwen2.5) is not taken for content, and one it folds into the first turn (Llama-2) is.
        """
        best = None
        for turns in range(1, _MAX_TURNS + 1):
            found = [m for m in (self._match(False, turns, prompt), self._match(True, turns, prompt)) if m]
            if not found:
                break  # past the prompt's turns, or (at one turn) not this template: the one-turn shape's
                # content group would have swallowed any number of turns
            best = min(found, key=lambda m: sum(len(c) for c in m[0]))  # least text left as content
        return best

    def strip_end(self, response: str) -> str:
        """``response`` without the end-of-turn and EOS markers at its end (repeatedly)."""
        changed = True
        while changed:
            changed = False
            for marker in self.end_markers:
                if response.endswith(marker):
                    response = response[: -len(marker)]
                    changed = True
        return response


def _flexible(literal: str) -> re.Pattern[str]:
    """``literal`` with any whitespace allowed between its visible characters (decode differences)."""
    chars = [re.escape(c) for c in literal if not c.isspace()]
    return re.compile(r"\s*".join(chars))


def _nth_end(query: str, literal: str, n: int) -> int | None:
    """Where the ``n``-th occurrence of ``literal`` in ``query`` ends (the last if there are fewer)."""
    ends = []
    start = 0
    while len(ends) < n and (i := query.find(literal, start)) != -1:
        ends.append(i + len(literal))
        start = i + len(literal)
    if len(ends) < n and literal.strip():
        trail = literal[len(literal.rstrip()) :]
        ends = []
        for m in _flexible(literal).finditer(query):
            end = m.end()
            if trail and query.startswith(trail, end):
                end += len(trail)
            ends.append(end)
            if len(ends) == n:
                break
    return ends[-1] if ends else None


def align_prefix(prompt: str, query: str) -> int | None:
    """Where ``prompt`` ends inside ``query`` when they differ only in whitespace, else None.

    Covers decoders that drop spaces (``" ."`` -> ``"."``, ``" 's"`` -> ``"'s"``) or add them.
    """
    if query.startswith(prompt):
        return len(prompt)
    i = j = 0
    while i < len(prompt):
        if j < len(query) and prompt[i] == query[j]:
            i += 1
            j += 1
        elif prompt[i].isspace():
            i += 1
        elif j < len(query) and query[j].isspace():
            j += 1
        else:
            return None
    return j


@dataclass
class Rollout:
    """A rollout in POLAR's terms: the prompt text and the response text."""

    prompt: str
    response: str
    template: str | None  # the template that was taken off, or None for a plain prompt


class RolloutParser:
    """Splits OpenRLHF's ``(query, prompt)`` into a :class:`Rollout` with the first template that fits.

    Args:
        templates: tried in order; the built-ins (ChatML, Llama-3) are appended unless present.
        cache_size: parsed prompts kept (the rollouts of one prompt share one parse).
    """

    def __init__(self, templates: list[ChatTemplate] | None = None, cache_size: int = 4096) -> None:
        templates = list(templates or [])
        names = {t.name for t in templates}
        templates += [ChatTemplate.builtin(n) for n in BUILTIN if n not in names]
        self.templates = templates
        log.info("chat templates taken off /get_reward texts, in order: %s", ", ".join(self.names))
        self._parse = functools.lru_cache(maxsize=cache_size)(self._parse_uncached)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.templates]

    def _parse_uncached(self, prompt: str) -> tuple[int, list[str], str] | None:
        for k, template in enumerate(self.templates):
            found = template.parse_prompt(prompt)
            if found is not None:
                return k, *found
        return None

    def split(self, query: str, prompt: str) -> Rollout | None:
        """The rollout, or None when ``query`` cannot be aligned with ``prompt`` at all."""
        parsed = self._parse(prompt)
        if parsed is not None:
            k, contents, last_literal = parsed
            template = self.templates[k]
            start = None
            if last_literal:
                start = _nth_end(query, last_literal, prompt.count(last_literal))
            if start is None:
                start = align_prefix(prompt, query)
            if start is None:
                return None
            return Rollout("\n".join(contents), template.strip_end(query[start:]), template.name)
        start = align_prefix(prompt, query)
        if start is None:
            return None
        response = query[start:]
        for template in self.templates:  # a plain prompt may still end in the policy's EOS
            response = template.strip_end(response)
        return Rollout(prompt, response, None)
