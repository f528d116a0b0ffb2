"""Tokenizer files beside a conversion: resolve POLAR special tokens and write an export's tokenizer.

A tokenizer source is a directory of HF tokenizer files, a ``tokenizer.json`` (``tokenizers``) or a
sentencepiece ``tokenizer.model``. Two ids matter to the converter: the split token between the
reference and the candidate half (``<|reward|>``, id 92397 in POLAR-7B) and the reward token whose hidden
state is scored (``[UNUSED_TOKEN_130]``, id 92527).

Names come from ``tokenizer_config.json`` (``added_tokens_decoder``) when the source has one. A bare
InternLM2 ``.model`` names id 92397 ``[UNUSED_TOKEN_0]``; for that vocabulary the released POLAR-7B
mapping (:data:`POLAR_ADDED_TOKENS`) is applied, so an export records ``<|reward|>`` either way.

An export with a sentencepiece model gets both tokenizers: ``tokenizer.model`` for the slow one and a
``tokenizer.json`` built from it (:mod:`hf_fast_tokenizer`) for the fast one, checked to give the same ids
on POLAR-shaped probe strings before anything is written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from megatron_polar.checkpoint.hf_fast_tokenizer import build_fast_tokenizer, write_fast_tokenizer
from megatron_polar.checkpoint.hf_io import ConversionError, read_json, write_json
from megatron_polar.data.tokenizer import RELEASED_ADDED_TOKENS, RELEASED_VOCAB_SIZE
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)

# The released POLAR-7B names (one table, in data/tokenizer.py) and the pieces that identify its
# vocabulary in a bare tokenizer.model.
POLAR_ADDED_TOKENS = RELEASED_ADDED_TOKENS
_POLAR_VOCAB_SIZE = RELEASED_VOCAB_SIZE
_POLAR_MARKERS = {92397: "[UNUSED_TOKEN_0]", 92527: "[UNUSED_TOKEN_130]"}

# POLAR-shaped strings on which the fast tokenizer must give the sentencepiece ids (boundary cases of
# the released format: leading newlines, CRLF and tabs, special-token text, unicode, runs of spaces).
PROBE_TEXTS = (
    "What is 2+2?\nThe answer is 4.<|reward|>What is 2+2?\n4",
    "prompt\n\n\nreference starts with newlines<|reward|>prompt\n\ncandidate",
    "  leading spaces\tand\ttabs\r\nCRLF line<|reward|>  leading spaces\n    indented code()\n",
    "special text inside: <|im_end|> and <|im_start|>assistant\n<s></s>[UNUSED_TOKEN_130]",
    "中文内容，标点。Ünïcödé ＡＢＣ ａｂｃ 😀 emoji\u00a0nbsp\u3000ideographic space",
    "",
    " ",
    "\n",
    "x" * 300 + " " * 17 + "y",
)


def _sentencepiece(path: Path):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path))


def _is_polar_vocab(sp) -> bool:
    return sp.get_piece_size() == _POLAR_VOCAB_SIZE and all(
        sp.id_to_piece(i) == piece for i, piece in _POLAR_MARKERS.items()
    )


def added_tokens_of(directory: Path) -> dict[int, str]:
    """Id -> name of the added tokens of the tokenizer in ``directory`` (see the module docstring)."""
    config = directory / "tokenizer_config.json"
    decoder = (read_json(config).get("added_tokens_decoder") or {}) if config.is_file() else {}
    if decoder:
        try:
            return {int(i): entry["content"] for i, entry in decoder.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConversionError(f"{config}: malformed added_tokens_decoder entry ({exc})") from exc
    if (directory / "tokenizer.model").is_file():
        sp = _sentencepiece(directory / "tokenizer.model")
        if _is_polar_vocab(sp):
            return dict(POLAR_ADDED_TOKENS)
        return {i: sp.id_to_piece(i) for i in (sp.unk_id(), sp.bos_id(), sp.eos_id()) if i >= 0}
    return {}


class TokenVocab:
    """Two-way lookup between token strings and ids for the tokenizer files in one directory."""

    def __init__(self, directory: Path) -> None:
        self._to_id: dict[str, int] = {}
        self._to_tok: dict[int, str] = {}
        self.pad_token: str | None = None
        self.bos_token: str | None = None
        self.eos_token: str | None = None
        if (directory / "tokenizer.model").is_file():
            sp = _sentencepiece(directory / "tokenizer.model")
            for i in range(sp.get_piece_size()):
                self._add(sp.id_to_piece(i), i)
            self.bos_token = sp.id_to_piece(sp.bos_id()) if sp.bos_id() >= 0 else None
            self.eos_token = sp.id_to_piece(sp.eos_id()) if sp.eos_id() >= 0 else None
        if (directory / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
            for text, i in tok.get_vocab(with_added_tokens=True).items():
                self._add(text, i)
        for i, name in added_tokens_of(directory).items():
            self._add(name, i)  # last: a name from the config wins over the model's piece
        config = directory / "tokenizer_config.json"
        if config.is_file():
            cfg = read_json(config)
            for key in ("pad_token", "bos_token", "eos_token"):
                value = cfg.get(key)
                value = value.get("content") if isinstance(value, dict) else value
                if value is not None:
                    setattr(self, key, value)
        if not self._to_id:
            raise ConversionError(f"no tokenizer.json, tokenizer.model or added tokens in {directory}")

    def _add(self, text: str, i: int) -> None:
        self._to_id[text] = i
        self._to_tok[i] = text

    def id_of(self, token: str | None) -> int | None:
        return None if token is None else self._to_id.get(token)

    def token_of(self, i: int) -> str | None:
        return self._to_tok.get(i)


def tokenizer_dir(source: str | Path) -> Path:
    """The directory holding the tokenizer files of ``source`` (a directory or one file)."""
    source = Path(source)
    if not source.exists():
        raise ConversionError(f"missing tokenizer {source}")
    return source if source.is_dir() else source.parent


def resolve_token(spec: str | int | None, vocab: TokenVocab | None, what: str) -> int | None:
    """A token given as an id (``92527``) or a string (``<|reward|>``) -> its id."""
    if spec is None:
        return None
    if isinstance(spec, int) or str(spec).lstrip("-").isdigit():
        return int(spec)
    if vocab is None:
        raise ConversionError(f"--{what} {spec!r} is a token string but no tokenizer was found to look it up")
    token_id = vocab.id_of(str(spec))
    if token_id is None:
        raise ConversionError(f"--{what} {spec!r} is not a token of the tokenizer")
    return token_id


def _copy_sources(source: Path, out_dir: Path) -> None:
    if source.is_file():
        name = {".json": "tokenizer.json", ".model": "tokenizer.model"}.get(source.suffix)
        if name is None:
            raise ConversionError(
                f"tokenizer file {source} is neither a tokenizer.json nor a tokenizer.model"
            )
        shutil.copyfile(source, out_dir / name)
        return
    copied = [f for f in TOKENIZER_FILES if (source / f).is_file()]
    if not any(f in copied for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise ConversionError(f"no tokenizer.json, tokenizer.model or vocab.json in {source}")
    for f in copied:
        shutil.copyfile(source / f, out_dir / f)


def _special_entry(token: str) -> dict:
    return {
        "content": token,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def reference_ids(sp, added: dict[int, str], text: str, add_bos: bool) -> list[int]:
    """What an HF slow tokenizer over ``sp`` gives: text split at added tokens, each piece by sentencepiece."""
    by_name = {name: i for i, name in added.items()}
    # Longest names first, so that a name containing another is matched whole.
    pattern = "|".join(re.escape(n) for n in sorted(by_name, key=len, reverse=True))
    ids = [sp.bos_id()] if add_bos else []
    for chunk in re.split(f"({pattern})", text) if pattern else [text]:
        if chunk in by_name:
            ids.append(by_name[chunk])
        elif chunk:
            ids.extend(sp.encode(chunk))
    return ids


def _write_fast_from_model(out_dir: Path, added: dict[int, str], add_bos: bool) -> None:
    """Build ``tokenizer.json`` from ``tokenizer.model`` and check it against sentencepiece."""
    model = out_dir / "tokenizer.model"
    sp = _sentencepiece(model)
    renamed = {i: name for i, name in added.items() if sp.id_to_piece(i) != name}
    fast = build_fast_tokenizer(model, renamed, set(added), add_bos)
    for text in PROBE_TEXTS:
        want = reference_ids(sp, added, text, add_bos)
        got = fast.encode(text).ids
        if got != want:
            raise ConversionError(
                f"the tokenizer.json built from {model} gives other ids than sentencepiece for {text!r}: "
                f"{got[:12]}... vs {want[:12]}..."
            )
    write_fast_tokenizer(fast, out_dir / "tokenizer.json")


def tokenizer_config(fmt: str, added: dict[int, str], roles: dict[str, str], base: dict) -> dict:
    """``tokenizer_config.json`` of an export: the released POLAR layout for ``internlm2``."""
    config = {k: v for k, v in base.items() if k not in ("auto_map", "tokenizer_class")}
    config["added_tokens_decoder"] = {str(i): _special_entry(added[i]) for i in sorted(added)}
    extra = [t["content"] if isinstance(t, dict) else t for t in base.get("additional_special_tokens") or []]
    extra += [name for name in roles.values() if name not in extra]
    config["additional_special_tokens"] = extra
    config.update(roles)
    config.setdefault("add_bos_token", True)
    config.setdefault("add_eos_token", False)
    config.setdefault("clean_up_tokenization_spaces", False)
    if fmt == "internlm2":
        config["tokenizer_class"] = "InternLM2Tokenizer"
        config["auto_map"] = {
            "AutoTokenizer": [
                "tokenization_internlm2.InternLM2Tokenizer",
                "tokenization_internlm2_fast.InternLM2TokenizerFast",
            ]
        }
        config.setdefault("decode_with_prefix_space", False)
    else:
        # The generic fast class loads our tokenizer.json as it is in transformers 4 and 5, where
        # "LlamaTokenizer(Fast)" rebuilds the pipeline (with a prefix space) or converts the .model again.
        # LlamaTokenizer.from_pretrained(dir, legacy=True, add_prefix_space=False) is the slow twin.
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config["legacy"] = True
        config.pop("add_prefix_space", None)
    return config


def export_tokenizer(
    source: str | Path, out_dir: Path, special_ids: dict[str, int | None], fmt: str = "llama"
) -> TokenVocab:
    """Write the tokenizer of ``source`` into ``out_dir`` for an export in format ``fmt``.

    ``special_ids`` maps a role (``reward_token``, ``split_token``) to its id. Each is registered as a
    special added token (never split) and its name is recorded under the role in
    ``tokenizer_config.json``. With a ``tokenizer.model`` a checked ``tokenizer.json`` is (re)built.
    """
    source = Path(source)
    _copy_sources(source, out_dir)
    added = added_tokens_of(out_dir)
    vocab = TokenVocab(out_dir)
    roles = {}
    for role, token_id in special_ids.items():
        if token_id is None:
            continue
        name = added.get(token_id) or vocab.token_of(token_id)
        if name is None:
            raise ConversionError(f"{role}_id {token_id} is not in the tokenizer of {source}")
        added[token_id] = name
        roles[role] = name
    config_path = out_dir / "tokenizer_config.json"
    base = read_json(config_path) if config_path.is_file() else {}
    config = tokenizer_config(fmt, added, roles, base)
    if (out_dir / "tokenizer.model").is_file():
        _write_fast_from_model(out_dir, added, bool(config["add_bos_token"]))
    else:
        # Only tokenizer.json: there is no slow tokenizer, and the generic fast class reads the file as
        # it is (a model-specific class may rebuild its own pipeline in transformers 5).
        config.pop("auto_map", None)
        config.pop("legacy", None)
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json(config_path, config)
    special_map = {
        key: config[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(key)
    }
    special_map["additional_special_tokens"] = config["additional_special_tokens"]
    write_json(out_dir / "special_tokens_map.json", special_map)
    log.info("tokenizer from %s with special tokens %s", source, json.dumps(roles))
    return TokenVocab(out_dir)
