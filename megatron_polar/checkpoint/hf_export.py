"""megatron_polar checkpoint -> HF directory (:func:`export_hf`).

Loads a checkpoint saved at any layout into one process and streams it, tensor by tensor, into HF
safetensors shards in the ``llama`` (``LlamaForSequenceClassification``, stock transformers / vLLM /
SGLang) or ``internlm2`` (``InternLM2ForRewardModel``, the released POLAR format) layout, with
``config.json`` (:mod:`hf_config`), the tokenizer files (:mod:`hf_tokenizer`) and, for ``internlm2``,
this project's remote code (:mod:`remote_code`), into a temporary directory renamed into place at the
end.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import torch

from megatron_polar.checkpoint import manager
from megatron_polar.checkpoint.hf_config import TORCH_DTYPE, internlm2_config, llama_config
from megatron_polar.checkpoint.hf_io import (
    ConversionError,
    ShardedSafetensorsWriter,
    atomic_directory,
    check_target,
    parse_size,
    write_json,
)
from megatron_polar.checkpoint.hf_layouts import LAYOUTS, TrunkShape, resolve_mcore_name
from megatron_polar.checkpoint.hf_tokenizer import TokenVocab, export_tokenizer
from megatron_polar.checkpoint.model_loading import load_checkpoint_model
from megatron_polar.checkpoint.remote_code import REMOTE_CODE_DIR, REMOTE_CODE_FILES
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


def _pad_token_id(explicit: int | None, vocab: TokenVocab | None, reward_id: int | None) -> int:
    """A pad id for last-non-pad pooling: anything but the reward token works."""
    if explicit is not None:
        if explicit == reward_id:
            raise ConversionError(f"--pad-token-id {explicit} is the reward token; pooling would skip it")
        return explicit
    for candidate in (vocab.id_of(vocab.pad_token), vocab.id_of(vocab.eos_token)) if vocab else ():
        if candidate is not None and candidate != reward_id:
            return candidate
    return 1 if reward_id == 0 else 0


@torch.no_grad()
def export_hf(
    checkpoint: str | Path,
    output: str | Path,
    *,
    fmt: str = "llama",
    tokenizer: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str | int = "4GB",
    pad_token_id: int | None = None,
    reward_token_id: int | None = None,
    split_token_id: int | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> Path:
    """Export the megatron_polar checkpoint ``checkpoint`` (any saved layout) as an HF directory."""
    output = Path(output)
    if fmt not in LAYOUTS:
        raise ConversionError(f"--format {fmt!r} is not one of {sorted(LAYOUTS)}")
    check_target(output, overwrite)  # fail before the (long) model load
    if tokenizer is not None and not Path(tokenizer).exists():
        raise ConversionError(f"missing tokenizer {tokenizer}")
    try:
        ckpt = manager.resolve(checkpoint)
    except manager.CheckpointError as exc:
        raise ConversionError(str(exc)) from exc
    cfg, model = load_checkpoint_model(str(ckpt), precision=None, device=device)
    dtype = dtype or cfg.train.precision
    if dtype not in TORCH_DTYPE:
        raise ConversionError(f"--dtype {dtype!r} is not one of bf16, fp16, fp32")
    m = cfg.model
    m = replace(
        m,
        reward_token_id=reward_token_id if reward_token_id is not None else m.reward_token_id,
        split_token_id=split_token_id if split_token_id is not None else m.split_token_id,
    )
    if m.reward_token_id is None:
        log.warning("no reward_token_id in %s or on the command line: clients must know it", ckpt)
    layout, shape = LAYOUTS[fmt], TrunkShape.of(m)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}

    def get(name: str) -> torch.Tensor:
        return state[resolve_mcore_name(name, state)]

    with atomic_directory(output, overwrite) as tmp:
        writer = ShardedSafetensorsWriter(tmp, parse_size(max_shard_size), TORCH_DTYPE[dtype])
        for hf_name, build in layout.from_mcore(shape, get):
            writer.add(hf_name, build())
        files = writer.finish()
        special = {"reward_token": m.reward_token_id, "split_token": m.split_token_id}
        vocab = export_tokenizer(tokenizer, tmp, special, fmt) if tokenizer is not None else None
        if fmt == "internlm2":
            for name in REMOTE_CODE_FILES:
                shutil.copyfile(REMOTE_CODE_DIR / name, tmp / name)
        if fmt == "llama":
            config = llama_config(m, dtype, _pad_token_id(pad_token_id, vocab, m.reward_token_id), vocab)
        else:
            config = internlm2_config(m, dtype, vocab)
        write_json(tmp / "config.json", config)
        provenance = {"checkpoint": str(ckpt.resolve()), "format": fmt, "dtype": dtype, "files": files}
        write_json(tmp / "polar_export.json", provenance)
    log.info("exported %s as %s (%s, %.1f MB) to %s", ckpt, fmt, dtype, writer.total_bytes / 1e6, output)
    return output
