"""Test-only stand-in for ``megatron_polar.data.format`` / ``.tokenizer`` until the data branch lands.

Implements just the agreed API the scorer uses (released POLAR assembly and truncation, a sentencepiece
loader and trainer). ``conftest.py`` installs it only when the real modules are missing.
"""

from __future__ import annotations

import io
import sys
import types
from dataclasses import dataclass


@dataclass(frozen=True)
class TruncationInfo:
    prompt_dropped: int = 0
    reference_dropped: int = 0
    candidate_dropped: int = 0

    @property
    def truncated(self) -> bool:
        return bool(self.prompt_dropped or self.reference_dropped or self.candidate_dropped)


def flatten_messages(x):
    if isinstance(x, str):
        return x
    if not isinstance(x, list):
        raise ValueError(f"expected a string or a list of messages, got {type(x).__name__}")
    out = []
    for i, m in enumerate(x):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} has no string 'content'")
        out.append(m["content"])
    return "\n".join(out)


def prompt_text(prompt, wrapper=None):
    return prompt if wrapper == "pretrain" else prompt + "\n"


def assemble_sequence(p, r, c, *, bos_id, split_id, reward_id, max_length=16384, max_response_length=4096):
    ref, cand = list(r[:max_response_length]), list(c[:max_response_length])
    keep = max(0, (max_length - 4 - len(ref) - len(cand)) // 2)
    prompt = list(p[len(p) - keep :]) if keep < len(p) else list(p)
    info = TruncationInfo(len(p) - len(prompt), len(r) - len(ref), len(c) - len(cand))
    return [bos_id, *prompt, *ref, split_id, *prompt, *cand, reward_id], info


class PolarTokenizer:
    def __init__(self, path, split_token="<|reward|>", reward_token="[UNUSED_TOKEN_130]"):
        import sentencepiece as spm

        self.path = str(path)
        self._sp = spm.SentencePieceProcessor(model_file=self.path)
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id = self._sp.bos_id()
        self.split_token_id = self._sp.piece_to_id(split_token)
        self.reward_token_id = self._sp.piece_to_id(reward_token)

    def encode(self, text):
        return self._sp.encode(text, out_type=int)

    def decode(self, ids):
        return self._sp.decode(list(ids))


def load_tokenizer(path, split_token="<|reward|>", reward_token="[UNUSED_TOKEN_130]", **_):
    return PolarTokenizer(path, split_token, reward_token)


def train_sentencepiece(texts, out_prefix, vocab_size, **_):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        user_defined_symbols=["<|reward|>", "[UNUSED_TOKEN_130]"],
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    out = f"{out_prefix}.model"
    with open(out, "wb") as f:
        f.write(model.getvalue())
    return out


def install() -> None:
    """Register the stand-in as ``megatron_polar.data.format`` and ``megatron_polar.data.tokenizer``."""
    import megatron_polar.data as data_pkg

    fmt = types.ModuleType("megatron_polar.data.format")
    tok = types.ModuleType("megatron_polar.data.tokenizer")
    for name in ("TruncationInfo", "flatten_messages", "prompt_text", "assemble_sequence"):
        setattr(fmt, name, globals()[name])
    for name in ("PolarTokenizer", "load_tokenizer", "train_sentencepiece"):
        setattr(tok, name, globals()[name])
    sys.modules[fmt.__name__], sys.modules[tok.__name__] = fmt, tok
    data_pkg.format, data_pkg.tokenizer = fmt, tok
