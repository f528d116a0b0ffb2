"""The released POLAR input format and its truncation rules, written once.

A POLAR reward model scores a *candidate* against a *reference* for one prompt. The released training
code turns a (prompt, reference, candidate) triple into one token sequence::

    [bos] + enc(P + "\\n") + enc(R) + [split_id] + enc(P + "\\n") + enc(C) + [reward_id]

where ``P``, ``R`` and ``C`` are the ``"\\n"``-join of the message contents (roles dropped, no chat
template). Rows marked ``wrapper="pretrain"`` omit the ``"\\n"`` after ``P``. The model's reward is read
at the last token, which is always ``reward_id``.

Truncation (per sequence, as the released code does it):

* ``R`` and ``C`` are each cut on the right to ``max_response_length`` tokens;
* the prompt keeps its LAST ``(max_length - 4 - |R| - |C|) // 2`` tokens (it appears twice).

Because ``|C|`` differs between the chosen and the rejected candidate, the two sequences of a pair may
keep different amounts of a long prompt. The result is never longer than ``max_length - 1`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PRETRAIN_WRAPPER = "pretrain"  # rows with this wrapper have no "\n" between prompt and response
# Number of positions the released formula reserves for special tokens (bos, split, reward, + 1 spare).
RESERVED_TOKENS = 4


class SupportsPolarTokens(Protocol):
    """What :func:`encode_sequence` needs from a tokenizer (see ``megatron_polar.data.tokenizer``)."""

    bos_id: int
    split_token_id: int
    reward_token_id: int

    def encode(self, text: str) -> list[int]: ...


@dataclass(frozen=True)
class TruncationInfo:
    """How many tokens truncation removed from each segment of one sequence."""

    prompt_dropped: int = 0  # tokens cut from the left of (each copy of) the prompt
    reference_dropped: int = 0  # tokens cut from the right of the reference
    candidate_dropped: int = 0  # tokens cut from the right of the candidate

    @property
    def truncated(self) -> bool:
        """Whether any segment lost tokens."""
        return bool(self.prompt_dropped or self.reference_dropped or self.candidate_dropped)


def flatten_messages(x: str | list[dict]) -> str:
    """Join message contents with ``"\\n"`` (roles dropped); a plain string is returned unchanged.

    Raises:
        ValueError: naming the problem when ``x`` is neither a string nor a list of
            ``{"role": str, "content": str}`` dicts.
    """
    if isinstance(x, str):
        return x
    if not isinstance(x, list):
        raise ValueError(f"expected a string or a list of messages, got {type(x).__name__}")
    contents = []
    for i, msg in enumerate(x):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} is a {type(msg).__name__}, expected an object")
        content = msg.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message {i} has no string 'content' (got {type(content).__name__})")
        role = msg.get("role", "")
        if not isinstance(role, str):
            raise ValueError(f"message {i} has a non-string 'role' ({type(role).__name__})")
        contents.append(content)
    return "\n".join(contents)


def prompt_text(prompt: str, wrapper: str | None = None) -> str:
    """The prompt as it appears in each half: ``P + "\\n"``, or ``P`` for the pretrain wrapper."""
    return prompt if wrapper == PRETRAIN_WRAPPER else prompt + "\n"


def build_polar_text(
    prompt: str, reference: str, candidate: str, split_token: str, wrapper: str | None = None
) -> str:
    """The released POLAR input string, without BOS and without the trailing reward token.

    For clients that tokenize text themselves (e.g. an inference server's pooling endpoint); they add
    BOS (usually the tokenizer does) and append the reward token id.
    """
    p = prompt_text(prompt, wrapper)
    return p + reference + split_token + p + candidate


def check_lengths(max_length: int, max_response_length: int) -> None:
    """Reject limits under which the released truncation cannot keep a sequence within ``max_length``."""
    if max_response_length < 1:
        raise ValueError(f"max_response_length must be >= 1, got {max_response_length}")
    if max_length < 2 * max_response_length + RESERVED_TOKENS:
        raise ValueError(
            f"max_length ({max_length}) must be >= 2 * max_response_length + {RESERVED_TOKENS} "
            f"({2 * max_response_length + RESERVED_TOKENS}) so that two capped responses always fit"
        )


def assemble_sequence(
    prompt_ids: Sequence[int],
    reference_ids: Sequence[int],
    candidate_ids: Sequence[int],
    *,
    bos_id: int,
    split_id: int,
    reward_id: int,
    max_length: int = 16384,
    max_response_length: int = 4096,
) -> tuple[list[int], TruncationInfo]:
    """Assemble one POLAR sequence from already-encoded segments and apply the released truncation.

    ``prompt_ids`` must be the encoding of ``P + "\\n"`` (or of ``P`` for the pretrain wrapper). Encode the
    prompt and reference once and call this for every candidate. The reward token is always last.
    """
    check_lengths(max_length, max_response_length)
    ref = list(reference_ids[:max_response_length])
    cand = list(candidate_ids[:max_response_length])
    keep = max(0, (max_length - RESERVED_TOKENS - len(ref) - len(cand)) // 2)
    prompt = list(prompt_ids[len(prompt_ids) - keep :]) if keep < len(prompt_ids) else list(prompt_ids)
    info = TruncationInfo(
        prompt_dropped=len(prompt_ids) - len(prompt),
        reference_dropped=len(reference_ids) - len(ref),
        candidate_dropped=len(candidate_ids) - len(cand),
    )
    ids = [bos_id, *prompt, *ref, split_id, *prompt, *cand, reward_id]
    return ids, info


def encode_sequence(
    tokenizer: SupportsPolarTokens,
    prompt: str,
    reference: str,
    candidate: str,
    *,
    max_length: int = 16384,
    max_response_length: int = 4096,
    wrapper: str | None = None,
) -> tuple[list[int], TruncationInfo]:
    """Tokenize one (prompt, reference, candidate) triple into the released POLAR token sequence.

    ``prompt``, ``reference`` and ``candidate`` are already-flattened strings (see
    :func:`flatten_messages`).
    """
    return assemble_sequence(
        tokenizer.encode(prompt_text(prompt, wrapper)),
        tokenizer.encode(reference),
        tokenizer.encode(candidate),
        bos_id=tokenizer.bos_id,
        split_id=tokenizer.split_token_id,
        reward_id=tokenizer.reward_token_id,
        max_length=max_length,
        max_response_length=max_response_length,
    )
