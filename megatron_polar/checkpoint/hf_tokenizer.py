"""Tokenizer files beside a conversion: resolve POLAR special tokens and record them in an export.

A tokenizer source is a directory of HF tokenizer files, a ``tokenizer.json`` (``tokenizers``) or a
sentencepiece ``tokenizer.model``. Only the two ids matter to the converter: the split token between the
reference and the candidate half (``<|reward|>`` in POLAR-7B) and the reward token whose hidden state is
scored (``[UNUSED_TOKEN_130]``, id 92527).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from megatron_polar.checkpoint.hf_io import ConversionError, read_json, write_json
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


class TokenVocab:
    """Two-way lookup between token strings and ids for the tokenizer files in one directory."""

    def __init__(self, directory: Path) -> None:
        self._to_id: dict[str, int] = {}
        self._to_tok: dict[int, str] = {}
        self.pad_token: str | None = None
        self.bos_token: str | None = None
        self.eos_token: str | None = None
        if (directory / "tokenizer.model").is_file():
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
            for i in range(sp.get_piece_size()):
                self._add(sp.id_to_piece(i), i)
        if (directory / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
            for text, i in tok.get_vocab(with_added_tokens=True).items():
                self._add(text, i)
        config = directory / "tokenizer_config.json"
        if config.is_file():
            cfg = read_json(config)
            for i, entry in (cfg.get("added_tokens_decoder") or {}).items():
                self._add(entry["content"], int(i))
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
    # Remote-code tokenizers (InternLM2) ship their Python module beside the files.
    copied += [p.name for p in source.glob("tokenization_*.py")]
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


def export_tokenizer(source: str | Path, out_dir: Path, special_ids: dict[str, int | None]) -> TokenVocab:
    """Copy the tokenizer of ``source`` into ``out_dir`` and register the POLAR special tokens.

    ``special_ids`` maps a role (``reward_token``, ``split_token``) to its id. Each token present in the
    vocabulary is added to ``added_tokens_decoder`` and ``additional_special_tokens`` (so that it is never
    split) and its string is recorded under the role's name in ``tokenizer_config.json``.
    """
    source = Path(source)
    _copy_sources(source, out_dir)
    vocab = TokenVocab(out_dir)
    config_path, map_path = out_dir / "tokenizer_config.json", out_dir / "special_tokens_map.json"
    config = read_json(config_path) if config_path.is_file() else {}
    if not config.get("tokenizer_class"):
        fast = (out_dir / "tokenizer.json").is_file()
        config["tokenizer_class"] = "PreTrainedTokenizerFast" if fast else "LlamaTokenizer"
    special_map = read_json(map_path) if map_path.is_file() else {}
    added = config.setdefault("added_tokens_decoder", {})
    extra = [
        t["content"] if isinstance(t, dict) else t for t in special_map.get("additional_special_tokens") or []
    ]
    for role, token_id in special_ids.items():
        if token_id is None:
            continue
        token = vocab.token_of(token_id)
        if token is None:
            raise ConversionError(f"{role}_id {token_id} is not in the tokenizer of {source}")
        added.setdefault(str(token_id), _special_entry(token))
        config[role] = token
        if token not in extra:
            extra.append(token)
    special_map["additional_special_tokens"] = extra
    config["additional_special_tokens"] = extra
    write_json(config_path, config)
    write_json(map_path, special_map)
    log.info("tokenizer from %s with special tokens %s", source, json.dumps(special_ids))
    return vocab
