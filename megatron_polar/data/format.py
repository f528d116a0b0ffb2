"""The released POLAR input format and its truncation rules, written once.

A POLAR reward model scores a *candidate* against a *reference* for one prompt. ``P``, ``R`` and ``C`` are
the ``"\\n"``-join of the message contents (roles dropped, no chat template). The released training code
(xtuner ``tokenize_ref``) turns a (prompt, reference, chosen, rejected) row into two token sequences:

1. each of ``P``, ``R``, ``C`` is tokenized on its own, with BOS, only to measure it;
2. ``R`` and ``C`` are cut on the right to ``max_response_length`` ids (BOS counted);
3. the prompt keeps its last ``(max_length - 4 - |R| - |C|) // 2`` ids; in training one prompt length
   serves the pair: the smaller of the values for the chosen and for the rejected candidate;
4. the kept ids are decoded back to text, dropping special tokens (``skip_special_tokens=True``), so BOS
   and special-token text inside the content, such as ``<|im_end|>``, disappear;
5. the text ``P + "\\n" + R + <split> + P + "\\n" + C`` is tokenized as one string, with BOS (no ``"\\n"``
   after ``P`` for ``wrapper="pretrain"`` rows; the training code also omits it before an empty ``R`` or
   ``C``);
6. the reward token id is appended; the model's reward is read there.

Tokenizing the whole string differs from joining per-segment ids: a response starting with ``"\\n"``
merges with the ``"\\n"`` before it, and so on. The split token is an added special token, which
tokenizers cut the text at before the model sees it, so the whole string's ids are
``bos + enc(P + "\\n" + R) + [split] + enc(P + "\\n" + C)``; that is how :func:`encode_candidates` builds
them, encoding the reference half once per pair.

The released client (InternLM/POLAR ``RewardModelClient``) differs in two places, both documented in
docs/data_tools.md: it always writes the ``"\\n"`` (also before an empty ``R`` or ``C``), and it computes
the prompt length per sequence. The scorer uses the training rule per (reference, candidate) sequence,
so a candidate's ids never depend on the other candidates of a request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PRETRAIN_WRAPPER = "pretrain"  # rows with this wrapper have no "\n" between prompt and response
# Positions the released formula reserves: the split token, the reward token and the two "\n".
RESERVED_TOKENS = 4
# max_length must leave the prompt at least one id next to two capped responses: at zero the released
# ``ids[-0:]`` would keep the WHOLE prompt, so requiring room keeps us identical to it in every accepted
# configuration (the released 16384 / 4096 leaves 4094).
MIN_PROMPT_ROOM = 2


class SupportsPolarTokens(Protocol):
    """What the encoder needs from a tokenizer (see ``megatron_polar.data.tokenizer``)."""

    bos_id: int
    split_token_id: int
    reward_token_id: int
    add_bos: bool

    def encode(self, text: str) -> list[int]: ...

    def encode_with_bos(self, text: str) -> list[int]: ...

    def decode_text(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class TruncationInfo:
    """How many measured ids (BOS included) truncation removed from each segment of one sequence."""

    prompt_dropped: int = 0  # ids cut from the left of the prompt
    reference_dropped: int = 0  # ids cut from the right of the reference
    candidate_dropped: int = 0  # ids cut from the right of the candidate

    @property
    def truncated(self) -> bool:
        """Whether any segment lost ids."""
        return bool(self.prompt_dropped or self.reference_dropped or self.candidate_dropped)


@dataclass(frozen=True)
class EncodedSequence:
    """One POLAR sequence: its ids (reward token last) and what truncation removed."""

    ids: list[int]
    info: TruncationInfo
    measured: tuple[int, int, int] = (0, 0, 0)  # |P|, |R|, |C| as measured (BOS included), before cuts


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


def half_text(prompt: str, response: str, wrapper: str | None = None, always_newline: bool = False) -> str:
    """One half of the POLAR string: ``P + "\\n" + response``.

    No ``"\\n"`` for the pretrain wrapper; none before an empty response either (the training code's
    rule), unless ``always_newline`` (the released client's rule).
    """
    if wrapper == PRETRAIN_WRAPPER or (response == "" and not always_newline):
        return prompt + response
    return prompt + "\n" + response


def build_polar_text(
    prompt: str,
    reference: str,
    candidate: str,
    split_token: str,
    wrapper: str | None = None,
    always_newline: bool = False,
) -> str:
    """The POLAR string of already-truncated, decoded segments, without BOS and reward token.

    For clients that tokenize text themselves (an inference server's pooling endpoint): they add BOS
    (the tokenizer usually does) and append the reward token id.
    """
    return (
        half_text(prompt, reference, wrapper, always_newline)
        + split_token
        + half_text(prompt, candidate, wrapper, always_newline)
    )


def check_lengths(max_length: int, max_response_length: int) -> None:
    """Reject limits under which the released truncation cannot keep a sequence within ``max_length``."""
    if max_response_length < 1:
        raise ValueError(f"max_response_length must be >= 1, got {max_response_length}")
    need = 2 * max_response_length + RESERVED_TOKENS + MIN_PROMPT_ROOM
    if max_length < need:
        raise ValueError(
            f"max_length ({max_length}) must be >= 2 * max_response_length + "
            f"{RESERVED_TOKENS + MIN_PROMPT_ROOM} ({need}) so that two capped responses and a prompt fit"
        )


def prompt_budget(max_length: int, reference_len: int, candidate_lens: Sequence[int]) -> int:
    """Ids the prompt keeps: ``min over C of (max_length - 4 - |R| - |C|) // 2`` (lengths with BOS)."""
    return min((max_length - RESERVED_TOKENS - reference_len - c) // 2 for c in candidate_lens)


def keep_last(ids: Sequence[int], keep: int) -> list[int]:
    """The last ``keep`` ids (``keep >= 1``; :func:`check_lengths` guarantees it)."""
    if keep < 1:
        raise ValueError(f"prompt budget {keep} < 1: limits not checked by check_lengths")
    return list(ids[len(ids) - keep :]) if keep < len(ids) else list(ids)


def encode_candidates(
    tokenizer: SupportsPolarTokens,
    prompt: str,
    reference: str,
    candidates: Sequence[str],
    *,
    max_length: int = 16384,
    max_response_length: int = 4096,
    wrapper: str | None = None,
    shared_prompt: bool = True,
) -> list[EncodedSequence]:
    """The POLAR sequences of ``candidates`` against one reference, by the released training algorithm.

    ``shared_prompt``: one prompt length for all candidates (the smallest; training keeps chosen and
    rejected on the same prompt). Without it each sequence gets its own, which is the training rule for
    a single candidate (the scorer uses this, so a candidate's ids do not depend on its neighbours).
    Strings are already flattened (see :func:`flatten_messages`).
    """
    check_lengths(max_length, max_response_length)
    if not candidates:
        return []
    tok = tokenizer
    p_ids = tok.encode_with_bos(prompt)
    r_ids = tok.encode_with_bos(reference)
    c_ids = [tok.encode_with_bos(c) for c in candidates]
    r_kept = r_ids[:max_response_length]
    c_kept = [c[:max_response_length] for c in c_ids]
    if shared_prompt:
        keeps = [prompt_budget(max_length, len(r_kept), [len(c) for c in c_kept])] * len(c_kept)
    else:
        keeps = [prompt_budget(max_length, len(r_kept), [len(c)]) for c in c_kept]
    r_text = tok.decode_text(r_kept)
    prompts: dict[int, tuple[str, list[int]]] = {}  # keep -> (prompt text, encoded reference half)
    out = []
    for cand_full, cand, keep in zip(c_ids, c_kept, keeps):
        if keep not in prompts:
            p_text = tok.decode_text(keep_last(p_ids, keep))
            prompts[keep] = (p_text, tok.encode_with_bos(half_text(p_text, r_text, wrapper)))
        p_text, ref_half = prompts[keep]
        cand_half = tok.encode(half_text(p_text, tok.decode_text(cand), wrapper))
        ids = [*ref_half, tok.split_token_id, *cand_half, tok.reward_token_id]
        info = TruncationInfo(
            prompt_dropped=max(0, len(p_ids) - keep),
            reference_dropped=len(r_ids) - len(r_kept),
            candidate_dropped=len(cand_full) - len(cand),
        )
        out.append(EncodedSequence(ids, info, (len(p_ids), len(r_ids), len(cand_full))))
    return out


def encode_pair(
    tokenizer: SupportsPolarTokens,
    prompt: str,
    reference: str,
    chosen: str,
    rejected: str,
    *,
    max_length: int = 16384,
    max_response_length: int = 4096,
    wrapper: str | None = None,
) -> tuple[EncodedSequence, EncodedSequence]:
    """The (chosen, rejected) sequences of one training row, on one prompt length (released training)."""
    c, r = encode_candidates(
        tokenizer,
        prompt,
        reference,
        [chosen, rejected],
        max_length=max_length,
        max_response_length=max_response_length,
        wrapper=wrapper,
        shared_prompt=True,
    )
    return c, r


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
    """The POLAR sequence of one (prompt, reference, candidate) triple: ``(ids, truncation info)``."""
    (seq,) = encode_candidates(
        tokenizer,
        prompt,
        reference,
        [candidate],
        max_length=max_length,
        max_response_length=max_response_length,
        wrapper=wrapper,
    )
    return seq.ids, seq.info
