"""Tokenizers for the POLAR format: a sentencepiece ``.model`` or an HF ``tokenizer.json``.

:class:`PolarTokenizer` is the one interface the data tools, the training dataset and the scorer use:
``encode`` adds no BOS/EOS, and the BOS, split (``<|reward|>``) and reward token ids are resolved once,
through the vocabulary, with a clear error when a name is absent.

:func:`train_sentencepiece` trains a tiny model for tests and the demo. It registers the InternLM2 names
``<|reward|>`` (split token) and ``[UNUSED_TOKEN_130]`` (reward token) as user-defined symbols, so the
defaults of ``load_tokenizer`` and of ``python -m data_tools build`` work unchanged for both the tiny
model and the released POLAR tokenizer. It sets ``add_dummy_prefix=False``, the ``identity``
normalisation, keeps extra whitespace and uses byte fallback, so ``decode(encode(x)) == x`` for any
UTF-8 string and segment-wise encodings concatenate without a spurious leading "▁".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

DEFAULT_SPLIT_TOKEN = "<|reward|>"  # between the reference half and the candidate half
DEFAULT_REWARD_TOKEN = "[UNUSED_TOKEN_130]"  # last token; its hidden state is scored (id 92527 in POLAR-7B)
_HF_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[BOS]")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class PolarTokenizer:
    """A loaded tokenizer with the POLAR special-token ids resolved.

    Attributes:
        kind: ``"sentencepiece"`` or ``"hf"``.
        path: the tokenizer file.
        sha256: hex digest of that file (recorded in dataset manifests).
        vocab_size: number of ids, added tokens included.
        bos_id, split_token_id, reward_token_id: the special ids of the POLAR sequence.
        split_token, reward_token: their names in the vocabulary (``None`` when given by id only).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split_token: str | None = DEFAULT_SPLIT_TOKEN,
        reward_token: str | None = DEFAULT_REWARD_TOKEN,
        split_token_id: int | None = None,
        reward_token_id: int | None = None,
        bos_token: str | None = None,
        bos_token_id: int | None = None,
    ) -> None:
        self._args = (
            str(path),
            split_token,
            reward_token,
            split_token_id,
            reward_token_id,
            bos_token,
            bos_token_id,
        )
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"tokenizer file not found: {self.path}")
        self.sha256 = file_sha256(self.path)
        if self.path.endswith(".json"):
            self.kind = "hf"
            from tokenizers import Tokenizer

            self._hf = Tokenizer.from_file(self.path)
            self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        else:
            self.kind = "sentencepiece"
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_file=self.path)
            self.vocab_size = self._sp.get_piece_size()
        self.bos_id = self._resolve_bos(bos_token, bos_token_id)
        self.split_token = split_token if split_token_id is None else None
        self.reward_token = reward_token if reward_token_id is None else None
        self.split_token_id = self._resolve("split", split_token, split_token_id)
        self.reward_token_id = self._resolve("reward", reward_token, reward_token_id)

    def __reduce__(self):
        # Worker processes reload from the file instead of pickling native tokenizer objects.
        return (PolarTokenizer, self._args)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with no BOS/EOS added."""
        if self.kind == "hf":
            return self._hf.encode(text, add_special_tokens=False).ids
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` over a list (uses the native batch path where there is one)."""
        if self.kind == "hf":
            return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        return self._sp.encode(texts, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are rendered, not skipped."""
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            return self._hf.decode(ids, skip_special_tokens=False)
        return self._sp.decode(ids)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry, or ``None`` when it is absent."""
        if self.kind == "hf":
            return self._hf.token_to_id(token)
        tid = self._sp.piece_to_id(token)
        if tid == self._sp.unk_id() and token != self._sp.id_to_piece(tid):
            return None
        return tid

    def _resolve(self, what: str, name: str | None, given_id: int | None) -> int:
        if given_id is not None:
            if not 0 <= given_id < self.vocab_size:
                raise ValueError(
                    f"{what} token id {given_id} is outside the vocabulary (size {self.vocab_size})"
                )
            return int(given_id)
        if name is None:
            raise ValueError(f"give either a {what} token name or a {what} token id")
        tid = self.token_to_id(name)
        if tid is None:
            raise ValueError(
                f"{what} token {name!r} is not in the vocabulary of {self.path}; "
                f"pass --{what}-token with a name it has, or --{what}-token-id"
            )
        return tid

    def _resolve_bos(self, bos_token: str | None, bos_token_id: int | None) -> int:
        if bos_token_id is not None or bos_token is not None:
            return self._resolve("bos", bos_token, bos_token_id)
        if self.kind == "sentencepiece":
            if self._sp.bos_id() < 0:
                raise ValueError(f"{self.path} defines no BOS; pass bos_token or bos_token_id")
            return self._sp.bos_id()
        config = Path(self.path).with_name("tokenizer_config.json")
        if config.is_file():
            bos = json.loads(config.read_text(encoding="utf-8")).get("bos_token")
            bos = bos.get("content") if isinstance(bos, dict) else bos
            if isinstance(bos, str) and self.token_to_id(bos) is not None:
                return self.token_to_id(bos)
        for candidate in _HF_BOS_CANDIDATES:
            if self.token_to_id(candidate) is not None:
                return self.token_to_id(candidate)
        raise ValueError(f"cannot find a BOS token in {self.path}; pass bos_token or bos_token_id")

    def describe(self) -> dict:
        """What a manifest records about this tokenizer."""
        return {
            "path": os.path.abspath(self.path),
            "sha256": self.sha256,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "split_token": self.split_token,
            "split_token_id": self.split_token_id,
            "reward_token": self.reward_token,
            "reward_token_id": self.reward_token_id,
        }


def load_tokenizer(
    path: str | os.PathLike,
    split_token: str | None = DEFAULT_SPLIT_TOKEN,
    reward_token: str | None = DEFAULT_REWARD_TOKEN,
    split_token_id: int | None = None,
    reward_token_id: int | None = None,
    bos_token: str | None = None,
    bos_token_id: int | None = None,
) -> PolarTokenizer:
    """Load a sentencepiece ``.model`` or an HF ``tokenizer.json`` (a directory holding one also works).

    An explicit ``*_token_id`` wins over the matching name. Raises ``ValueError`` naming the token when a
    name is not in the vocabulary.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "tokenizer.json", path / "tokenizer.model"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {path}")
        path = found[0]
    return PolarTokenizer(
        path, split_token, reward_token, split_token_id, reward_token_id, bos_token, bos_token_id
    )


def train_sentencepiece(
    texts_or_file: Iterable[str] | str | os.PathLike,
    out_prefix: str | os.PathLike,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    split_token: str = DEFAULT_SPLIT_TOKEN,
    reward_token: str = DEFAULT_REWARD_TOKEN,
) -> str:
    """Train a small sentencepiece model and return the path of ``<out_prefix>.model``.

    ``texts_or_file`` is an iterable of sentences or the path of a text file (one sentence per line).
    Ids: 0 ``<unk>``, 1 ``<s>`` (BOS), 2 ``</s>``, then the split and reward tokens as user-defined
    symbols (so each encodes to one id). Training is single-threaded and deterministic.
    """
    import sentencepiece as spm

    if isinstance(texts_or_file, (str, os.PathLike)):
        with open(texts_or_file, encoding="utf-8") as f:
            sentences = [line.rstrip("\n") for line in f]
    else:
        sentences = list(texts_or_file)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        user_defined_symbols=[split_token, reward_token],
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
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.write(model.getvalue())
    return out
