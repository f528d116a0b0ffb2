"""A ``tokenizer.json`` (HF ``tokenizers``) that encodes exactly as a sentencepiece BPE ``.model``.

Exports ship both files: the ``.model`` for the slow (sentencepiece) tokenizer and this ``tokenizer.json``
for the fast one, which vLLM, SGLang and ``AutoTokenizer`` use by default. Letting transformers convert
the ``.model`` itself at load time goes wrong twice: its Llama converter prepends ``▁`` to every text
(the InternLM2 model has ``add_dummy_prefix: false``), and the conversion imports sentencepiece's
protobuf module, which fails when the installed protobuf is older than the one it was generated with.

The model file is read with a small protobuf wire-format reader (no generated code, so no protobuf
version to match): pieces, their scores and types, the model type and the normaliser flags. The fast
tokenizer mirrors sentencepiece step by step:

* normaliser: spaces become ``▁`` (plus a leading ``▁`` when ``add_dummy_prefix``); only the
  ``identity`` normalisation without whitespace collapsing can be mirrored, anything else is refused;
* user-defined pieces (``[UNUSED_TOKEN_*]`` in InternLM2) are matched whole before BPE, as
  sentencepiece does, so they are registered as (non-special) added tokens;
* BPE merges rank by the merged piece's score (sentencepiece merges the highest-scored pair first);
* characters outside the vocabulary fall back to ``<0xXX>`` byte pieces.

Renamed ids (``<|reward|>`` for piece 92397 ``[UNUSED_TOKEN_0]``) take the new name in the vocabulary,
so the name resolves to the released id in both tokenizers.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from megatron_polar.checkpoint.hf_io import ConversionError

# SentencePiece.Type values of sentencepiece_model.proto.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2


@dataclass
class SentencePieceModel:
    """What a ``tokenizer.model`` holds that the fast tokenizer needs (proto defaults applied)."""

    pieces: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    model_type: int = _UNIGRAM
    byte_fallback: bool = False
    normalizer_name: str = "nmt_nfkc"
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; value is an int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def read_sentencepiece_model(path: str | Path) -> SentencePieceModel:
    """Parse ``path`` (a sentencepiece ``ModelProto``); a ConversionError names it when it is not one."""
    path = Path(path)
    model = SentencePieceModel()
    try:
        for number, _, value in _fields(path.read_bytes()):
            if number == 1:  # repeated SentencePiece
                piece, score, kind = "", 0.0, NORMAL
                for n, _, v in _fields(value):
                    if n == 1:
                        piece = v.decode("utf-8")
                    elif n == 2:
                        score = struct.unpack("<f", v)[0]
                    elif n == 3:
                        kind = v
                model.pieces.append(piece)
                model.scores.append(score)
                model.types.append(kind)
            elif number == 2:  # TrainerSpec
                for n, _, v in _fields(value):
                    if n == 3:
                        model.model_type = v
                    elif n == 35:
                        model.byte_fallback = bool(v)
                    elif n in (40, 41, 42):
                        setattr(model, {40: "unk_id", 41: "bos_id", 42: "eos_id"}[n], _signed(v))
            elif number == 3:  # NormalizerSpec
                for n, _, v in _fields(value):
                    if n == 1:
                        model.normalizer_name = v.decode("utf-8")
                    elif n == 3:
                        model.add_dummy_prefix = bool(v)
                    elif n == 4:
                        model.remove_extra_whitespaces = bool(v)
                    elif n == 5:
                        model.escape_whitespaces = bool(v)
    except (IndexError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise ConversionError(f"{path} is not a sentencepiece model: {exc}") from exc
    if not model.pieces:
        raise ConversionError(f"{path} is not a sentencepiece model (no pieces)")
    return model


def _check_mirrorable(sp: SentencePieceModel, path: Path) -> None:
    if sp.model_type != _BPE:
        raise ConversionError(
            f"{path}: sentencepiece model_type {sp.model_type} is not BPE; the exporter writes a fast "
            "tokenizer for BPE models only (pass a tokenizer directory that already has tokenizer.json)"
        )
    if sp.normalizer_name != "identity" or sp.remove_extra_whitespaces or not sp.escape_whitespaces:
        raise ConversionError(
            f"{path}: normalizer {sp.normalizer_name!r} (remove_extra_whitespaces="
            f"{sp.remove_extra_whitespaces}) cannot be mirrored exactly by a fast tokenizer; only the "
            "identity normalisation is supported (pass a directory that already has tokenizer.json)"
        )


def _merges(sp: SentencePieceModel, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, highest-scored result first.

    Sentencepiece merges adjacent symbols into a piece when the piece exists, best score first; HF BPE
    applies the lowest-ranked merge first, so ranks follow the score (ties: lower id first). User-defined
    pieces are atomic in sentencepiece and byte pieces only appear after BPE, so neither takes part.
    """
    ranked = []
    for i, piece in enumerate(sp.pieces):
        if sp.types[i] != NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-sp.scores[i], i, vocab[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_fast_tokenizer(
    model_path: str | Path,
    renamed: dict[int, str],
    special_ids: set[int],
    add_bos: bool,
):
    """A ``tokenizers.Tokenizer`` equivalent to the sentencepiece model at ``model_path``.

    ``renamed`` gives ids whose name differs from the model's piece (``{92397: "<|reward|>"}``);
    ``special_ids`` are the ids registered as special added tokens (never split, skipped on decode);
    ``add_bos`` prepends the model's BOS, as the slow tokenizer does with ``add_bos_token``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    path = Path(model_path)
    sp = read_sentencepiece_model(path)
    _check_mirrorable(sp, path)
    names = list(sp.pieces)
    for i, name in renamed.items():
        if not 0 <= i < len(names):
            raise ConversionError(f"token id {i} ({name!r}) is outside the vocabulary of {path}")
        names[i] = name
    vocab = {}
    for i, name in enumerate(names):
        vocab.setdefault(name, i)  # a duplicate name keeps its first id, as sentencepiece does
    unk = names[sp.unk_id] if 0 <= sp.unk_id < len(names) else None
    tok = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=_merges(sp, {p: i for i, p in enumerate(sp.pieces) if sp.types[i] == NORMAL}),
            unk_token=unk,
            byte_fallback=sp.byte_fallback,
            fuse_unk=True,
        )
    )
    steps = [normalizers.Replace(" ", "▁")]
    if sp.add_dummy_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tok.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if sp.add_dummy_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    # Sentencepiece matches user-defined pieces whole, before BPE; added tokens do the same.
    user = [
        AddedToken(names[i], special=False, normalized=False)
        for i, kind in enumerate(sp.types)
        if kind == USER_DEFINED and i not in special_ids
    ]
    tok.add_tokens(user)
    tok.add_special_tokens(
        [AddedToken(names[i], special=True, normalized=False) for i in sorted(special_ids)]
    )
    if add_bos:
        if not 0 <= sp.bos_id < len(names):
            raise ConversionError(f"{path} defines no BOS but the tokenizer config adds one")
        bos = names[sp.bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, sp.bos_id)]
        )
    for i in sorted(special_ids) + [i for i, k in enumerate(sp.types) if k == USER_DEFINED]:
        if tok.token_to_id(names[i]) != i:  # a name that collides with another piece's
            raise ConversionError(
                f"token {names[i]!r} (id {i}) of {path} would get id {tok.token_to_id(names[i])} in "
                "tokenizer.json"
            )
    return tok


def write_fast_tokenizer(tok, out_path: Path) -> None:
    """Save ``tok`` as ``tokenizer.json`` (pretty-printed, like transformers writes it)."""
    out_path.write_text(json.dumps(json.loads(tok.to_str()), indent=2, ensure_ascii=False) + "\n", "utf-8")
