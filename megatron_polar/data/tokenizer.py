"""Tokenizers for the POLAR format: a sentencepiece ``.model``, an HF ``tokenizer.json``, or a directory.

:class:`PolarTokenizer` is the one interface the data tools, the training dataset and the scorer use. It
behaves like the released training code's Hugging Face tokenizer in the three ways the POLAR format
depends on (see ``megatron_polar.data.format``):

* ``encode`` cuts the text at *added tokens* first (the names of ``tokenizer_config.json``'s
  ``added_tokens_decoder``, plus the split token) and tokenizes the pieces between them, so
  ``"<|im_end|>"`` in a text is one id, as in ``transformers``; it adds no BOS (``encode_with_bos`` adds it
  when ``add_bos_token`` says so);
* ``decode_text`` is ``decode(ids, skip_special_tokens=True)``: special ids are dropped, and the InternLM2
  tokenizer's clean-up of spaces before punctuation is applied when the configuration names it;
* the BOS, split (``<|reward|>``) and reward token ids resolve by name through the added tokens and then
  the vocabulary, with a clear error when a name is absent. A bare InternLM2 ``tokenizer.model`` (the
  POLAR vocabulary, where id 92397 is still called ``[UNUSED_TOKEN_0]``) falls back to the released
  POLAR-7B added tokens (split 92397, chat tokens 92538-92543).

:func:`train_sentencepiece` trains a tiny model for tests and the demo. It registers the InternLM2 names
``<|reward|>`` (split token) and ``[UNUSED_TOKEN_130]`` (reward token) as user-defined symbols, so the
defaults of ``load_tokenizer`` and of ``python -m data_tools build`` work unchanged for both the tiny
model and the released POLAR tokenizer. It sets ``add_dummy_prefix=False``, the ``identity``
normalisation, keeps extra whitespace and uses byte fallback, so ``decode(encode(x)) == x`` for any
UTF-8 string.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from megatron_polar.utils.logging import get_logger

logger = get_logger(__name__)

DEFAULT_SPLIT_TOKEN = "<|reward|>"  # between the reference half and the candidate half
DEFAULT_REWARD_TOKEN = "[UNUSED_TOKEN_130]"  # last token; its hidden state is scored (id 92527 in POLAR-7B)
_HF_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[BOS]")

# The released POLAR-7B tokenizer: InternLM2's 92,544-id sentencepiece model, whose tokenizer_config.json
# renames some unused pieces. Used when a bare tokenizer.model of that vocabulary comes without it.
RELEASED_VOCAB_SIZE = 92544
RELEASED_SPLIT_TOKEN_ID = 92397
RELEASED_REWARD_TOKEN_ID = 92527
RELEASED_ADDED_TOKENS: dict[int, str] = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    92397: "<|reward|>",
    92538: "<|plugin|>",
    92539: "<|interpreter|>",
    92540: "<|action_end|>",
    92541: "<|action_start|>",
    92542: "<|im_end|>",
    92543: "<|im_start|>",
}
_INTERNLM2_CLASS = "InternLM2Tokenizer"  # its decode always cleans up spaces before punctuation
CONFIG_NAME = "tokenizer_config.json"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clean_up_tokenization(text: str) -> str:
    """The space clean-up of ``transformers`` decoders (" ." -> ".", " n't" -> "n't", ...).

    The released InternLM2 tokenizer applies it on every decode, whatever ``clean_up_tokenization_spaces``
    says, so the released POLAR code's decoded segments have it.
    """
    for old, new in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(old, new)
    return text


def read_tokenizer_config(path: str | os.PathLike) -> dict:
    """``tokenizer_config.json`` as a dict; ``ValueError`` naming the file and field when malformed."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable tokenizer configuration: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    decoder = config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise ValueError(f"{path}: 'added_tokens_decoder' must be an object")
    for key, entry in decoder.items():
        if not str(key).isdigit() or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise ValueError(
                f"{path}: added_tokens_decoder[{key!r}] must map an id to an object with a string 'content'"
            )
    for key in ("add_bos_token", "clean_up_tokenization_spaces"):
        if key in config and not isinstance(config[key], bool):
            raise ValueError(f"{path}: '{key}' must be true or false, got {config[key]!r}")
    return config


class PolarTokenizer:
    """A loaded tokenizer with the POLAR special-token ids resolved.

    Attributes:
        kind: ``"sentencepiece"`` or ``"hf"``.
        path: the tokenizer file.
        config_path: the ``tokenizer_config.json`` honoured (beside the file), or ``None``.
        sha256: hex digest of the tokenizer file (recorded in dataset manifests).
        vocab_size: number of ids, added tokens included.
        bos_id, split_token_id, reward_token_id: the special ids of the POLAR sequence.
        split_token, reward_token: their names (``None`` when given by id only).
        add_bos: whether a measured or encoded text starts with BOS (``add_bos_token``; default true).
        added_tokens: name -> id of the tokens ``encode`` cuts the text at.
        special_ids: ids that ``decode_text`` drops (``skip_special_tokens``).
        clean_up_spaces: whether ``decode_text`` applies :func:`clean_up_tokenization`.
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
        config_path = Path(self.path).with_name(CONFIG_NAME)
        self.config_path = str(config_path) if config_path.is_file() else None
        config = read_tokenizer_config(config_path) if self.config_path else {}
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
        self.added_tokens, self.special_ids = self._added_tokens(config)
        self.add_bos = config.get("add_bos_token", True)
        self.clean_up_spaces = config.get("tokenizer_class") == _INTERNLM2_CLASS or config.get(
            "clean_up_tokenization_spaces", False
        )
        if not config and self._is_released_vocab():
            self.clean_up_spaces = True  # the released tokenizer is InternLM2's
        self.bos_id = self._resolve_bos(bos_token, bos_token_id, config)
        self.split_token = split_token if split_token_id is None else None
        self.reward_token = reward_token if reward_token_id is None else None
        self.split_token_id = self._resolve("split", split_token, split_token_id)
        self.reward_token_id = self._resolve("reward", reward_token, reward_token_id)
        if self.kind == "sentencepiece":
            # The split token is always an added special token: text is cut at it, decoding drops it.
            if self.split_token is not None:
                self.added_tokens.setdefault(self.split_token, self.split_token_id)
            self.special_ids.add(self.split_token_id)
            if not config and self.reward_token is not None and not self._is_released_vocab():
                # A tokenizer of this project without a configuration (the tiny test models): the reward
                # token is special too, as exports of it declare.
                self.added_tokens.setdefault(self.reward_token, self.reward_token_id)
                self.special_ids.add(self.reward_token_id)
            self.special_ids.add(self.bos_id)
        names = sorted(self.added_tokens, key=len, reverse=True)  # longest first: leftmost-longest match
        self._added_re = re.compile("|".join(map(re.escape, names))) if names else None

    def __reduce__(self):
        # Worker processes reload from the file instead of pickling native tokenizer objects.
        return (PolarTokenizer, self._args)

    # ------------------------------------------------------------------ set-up
    def _is_released_vocab(self) -> bool:
        return (
            self.kind == "sentencepiece"
            and self.vocab_size == RELEASED_VOCAB_SIZE
            and self._sp.id_to_piece(RELEASED_REWARD_TOKEN_ID) == DEFAULT_REWARD_TOKEN
        )

    def _added_tokens(self, config: dict) -> tuple[dict[str, int], set[int]]:
        """Added tokens (name -> id) and the special ids, from the configuration or the tokenizer."""
        added: dict[str, int] = {}
        special: set[int] = set()
        if self.kind == "hf":
            for tid, tok in self._hf.get_added_tokens_decoder().items():
                added[tok.content] = int(tid)
                if tok.special:
                    special.add(int(tid))
        decoder = config.get("added_tokens_decoder")
        if decoder is None and self._is_released_vocab():
            logger.warning(
                "%s: no %s beside it; using the released POLAR-7B added tokens (%s is split token %d)",
                self.path,
                CONFIG_NAME,
                DEFAULT_SPLIT_TOKEN,
                RELEASED_SPLIT_TOKEN_ID,
            )
            decoder = {
                str(i): {"content": name, "special": True} for i, name in RELEASED_ADDED_TOKENS.items()
            }
        for key, entry in (decoder or {}).items():
            tid = int(key)
            if self.kind == "sentencepiece" and tid >= self.vocab_size:
                raise ValueError(
                    f"{self.config_path}: added_tokens_decoder[{key!r}] is outside the vocabulary of "
                    f"{self.path} ({self.vocab_size} ids)"
                )
            added[entry["content"]] = tid
            if entry.get("special", False):
                special.add(tid)
        if self.kind == "sentencepiece":
            special.update(
                i for i in range(self.vocab_size) if self._sp.is_control(i) or self._sp.is_unknown(i)
            )
        return added, special

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
                f"{what} token {name!r} is not in the vocabulary of {self.path}"
                + (f" nor in the added tokens of {self.config_path}" if self.config_path else "")
                + f"; pass --{what}-token with a name it has, or --{what}-token-id"
            )
        return tid

    def _resolve_bos(self, bos_token: str | None, bos_token_id: int | None, config: dict) -> int:
        if bos_token_id is not None or bos_token is not None:
            return self._resolve("bos", bos_token, bos_token_id)
        bos = config.get("bos_token")
        bos = bos.get("content") if isinstance(bos, dict) else bos
        if isinstance(bos, str) and self.token_to_id(bos) is not None:
            return self.token_to_id(bos)
        if self.kind == "sentencepiece":
            if self._sp.bos_id() < 0:
                raise ValueError(f"{self.path} defines no BOS; pass bos_token or bos_token_id")
            return self._sp.bos_id()
        for candidate in _HF_BOS_CANDIDATES:
            if self.token_to_id(candidate) is not None:
                return self.token_to_id(candidate)
        raise ValueError(f"cannot find a BOS token in {self.path}; pass bos_token or bos_token_id")

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS, cut at added tokens first (as ``transformers`` does)."""
        if self.kind == "hf":
            return self._hf.encode(text, add_special_tokens=False).ids
        if self._added_re is None:
            return self._sp.encode(text, out_type=int)
        ids: list[int] = []
        at = 0
        for m in self._added_re.finditer(text):
            if m.start() > at:
                ids.extend(self._sp.encode(text[at : m.start()], out_type=int))
            ids.append(self.added_tokens[m.group()])
            at = m.end()
        if at < len(text):
            ids.extend(self._sp.encode(text[at:], out_type=int))
        return ids

    def encode_with_bos(self, text: str) -> list[int]:
        """``encode`` with BOS in front when the tokenizer adds it (``add_special_tokens=True``)."""
        ids = self.encode(text)
        return [self.bos_id, *ids] if self.add_bos else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` over a list."""
        if self.kind == "hf":
            return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are rendered, not skipped (for showing sequences)."""
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            return self._hf.decode(ids, skip_special_tokens=False)
        return self._sp.decode(ids)

    def decode_text(self, ids: Iterable[int]) -> str:
        """``decode(ids, skip_special_tokens=True)`` as the released code's tokenizer does it."""
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            text = self._hf.decode(ids, skip_special_tokens=True)
        else:
            text = self._sp.decode([i for i in ids if i not in self.special_ids])
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def token_to_id(self, token: str) -> int | None:
        """The id of an added token or vocabulary entry, or ``None`` when it is absent."""
        if token in self.added_tokens:
            return self.added_tokens[token]
        if self.kind == "hf":
            return self._hf.token_to_id(token)
        tid = self._sp.piece_to_id(token)
        if tid == self._sp.unk_id() and token != self._sp.id_to_piece(tid):
            return None
        return tid

    def describe(self) -> dict:
        """What a manifest records about this tokenizer."""
        return {
            "path": os.path.abspath(self.path),
            "sha256": self.sha256,
            "kind": self.kind,
            "config": os.path.abspath(self.config_path) if self.config_path else None,
            "vocab_size": self.vocab_size,
            "add_bos": self.add_bos,
            "bos_id": self.bos_id,
            "split_token": self.split_token,
            "split_token_id": self.split_token_id,
            "reward_token": self.reward_token,
            "reward_token_id": self.reward_token_id,
            "clean_up_spaces": self.clean_up_spaces,
        }


def resolve_tokenizer_path(path: str | os.PathLike) -> Path:
    """The tokenizer file of ``path``: the file itself, or the one a directory holds.

    In a directory, ``tokenizer.model`` wins when ``tokenizer_config.json`` names a slow tokenizer class
    (the released POLAR-7B directory names ``InternLM2Tokenizer``, which has no fast version);
    otherwise ``tokenizer.json`` wins.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    candidates = [path / "tokenizer.json", path / "tokenizer.model"]
    config = path / CONFIG_NAME
    if config.is_file():
        cls = read_tokenizer_config(config).get("tokenizer_class")
        if isinstance(cls, str) and not cls.endswith("Fast"):
            candidates.reverse()
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise FileNotFoundError(f"no tokenizer.json or tokenizer.model in {path}")
    return found[0]


def load_tokenizer(
    path: str | os.PathLike,
    split_token: str | None = DEFAULT_SPLIT_TOKEN,
    reward_token: str | None = DEFAULT_REWARD_TOKEN,
    split_token_id: int | None = None,
    reward_token_id: int | None = None,
    bos_token: str | None = None,
    bos_token_id: int | None = None,
) -> PolarTokenizer:
    """Load a sentencepiece ``.model``, an HF ``tokenizer.json``, or a directory holding one.

    A ``tokenizer_config.json`` beside the file is honoured (added tokens, ``add_bos_token``, BOS name).
    An explicit ``*_token_id`` wins over the matching name. Raises ``ValueError`` naming the token when a
    name is not in the vocabulary.
    """
    return PolarTokenizer(
        resolve_tokenizer_path(path),
        split_token,
        reward_token,
        split_token_id,
        reward_token_id,
        bos_token,
        bos_token_id,
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
