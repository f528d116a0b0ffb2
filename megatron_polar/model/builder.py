"""Build this rank's reward-model chunks: layer spec choice, pipeline stages and virtual chunks."""

from __future__ import annotations

import copy
import functools
import traceback
from dataclasses import dataclass

import torch
from megatron.core.enums import ModelType
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_polar.config.schema import PolarConfig
from megatron_polar.config.to_mcore import transformer_config
from megatron_polar.model.reward_model import PolarRewardModel
from megatron_polar.model.sdpa_attention import SdpaAttention
from megatron_polar.model.shared_prefix_attention import SharedPrefixSdpaAttention, te_shared_prefix_attention
from megatron_polar.parallel import cpu_backend
from megatron_polar.parallel.comm import stage_flags
from megatron_polar.utils.errors import ConfigError
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class TransformerEngineProbe:
    """What importing Transformer Engine (and megatron-core's TE extension) gave in this process."""

    error: str | None = None  # the import failure, as ``Type: message``; None when both imported

    @property
    def usable(self) -> bool:
        return self.error is None


@functools.cache
def probe_transformer_engine() -> TransformerEngineProbe:
    """Import Transformer Engine once and keep the failure, if any, to show it to the user."""
    try:
        import transformer_engine.pytorch  # noqa: F401
        from megatron.core.extensions import transformer_engine as _  # noqa: F401
    except Exception as exc:  # ImportError, or a TE build that does not match torch or the CUDA driver
        return TransformerEngineProbe(error="".join(traceback.format_exception_only(type(exc), exc)).strip())
    return TransformerEngineProbe()


def have_transformer_engine() -> bool:
    """True when Transformer Engine for PyTorch imports (and megatron-core's TE extension with it)."""
    return probe_transformer_engine().usable


def choose_transformer_engine(impl: str, gpu: bool, te: TransformerEngineProbe) -> bool:
    """Whether to build the Transformer Engine spec, given ``model.transformer_impl``, whether this
    process runs on a CUDA GPU, and what importing TE gave.

    ``local`` never uses TE. On a GPU, ``auto`` and ``transformer_engine`` need TE, and a missing or
    broken TE is an error that shows the import failure: falling back to the local spec there would
    train with dense masks, no sequence parallelism and torch's optimizer instead of stopping. Without
    a GPU, ``auto`` picks the local spec and ``transformer_engine`` is an error.
    """
    if impl == "local":
        return False
    if gpu and te.usable:
        return True
    if not gpu:
        if impl == "auto":
            return False
        raise ConfigError(
            "model.transformer_impl=transformer_engine but Transformer Engine is not usable here: "
            "it needs a CUDA GPU (set model.transformer_impl=local or auto to run on the CPU)"
        )
    raise ConfigError(
        f"model.transformer_impl={impl} on a CUDA GPU, but Transformer Engine failed to import:\n"
        f"  {te.error}\n"
        "Install a Transformer Engine that matches this torch (NVIDIA's PyTorch container ships one; "
        "see docs/cluster.md, 'Container recipe'), or set model.transformer_impl=local to train without it "
        "(dense attention masks, no sequence parallelism, no FP8)"
    )


def resolve_use_te(cfg: PolarConfig) -> bool:
    """Whether to use the Transformer Engine spec here (see :func:`choose_transformer_engine`)."""
    impl = cfg.model.transformer_impl
    gpu = torch.cuda.is_available() and not cpu_backend.is_enabled()
    # Import TE only when the answer can depend on it: a CPU run with ``auto`` or ``local`` never needs it.
    te = probe_transformer_engine() if gpu and impl != "local" else TransformerEngineProbe("not probed")
    return choose_transformer_engine(impl, gpu, te)


def layer_spec(use_te: bool) -> ModuleSpec:
    """The transformer-layer spec: Transformer Engine's, or megatron-core's local one with PyTorch SDPA
    as core attention (causal when no mask is given, the explicit block-diagonal mask for packed rows).

    Either way the core attention is a subclass that also runs shared-prefix rows
    (``model/shared_prefix_attention.py``) and hands every other batch to the spec's own class."""
    if use_te:
        spec = copy.deepcopy(get_gpt_layer_with_transformer_engine_spec())
        spec.submodules.self_attention.submodules.core_attention = te_shared_prefix_attention()
        return spec
    spec = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.arbitrary
    spec.submodules.self_attention.submodules.core_attention = SharedPrefixSdpaAttention
    return spec


def takes_attention_masks(model: torch.nn.Module) -> bool:
    """Whether ``model``'s core attention honours an explicit ``attention_mask`` (the local spec's SDPA
    attention does; Transformer Engine's causal spec ignores it)."""
    return any(isinstance(m, SdpaAttention) for m in model.modules())


def build_model_chunks(cfg: PolarConfig, use_te: bool | None = None) -> list[PolarRewardModel]:
    """This rank's model chunks (one, or ``virtual_pipeline_model_parallel_size`` when interleaving)."""
    if use_te is None:
        use_te = resolve_use_te(cfg)
    if cfg.parallel.sequence_parallel and not use_te:
        raise ConfigError(
            "parallel.sequence_parallel=true needs the Transformer Engine spec (megatron-core's local norms "
            "do not support it); set parallel.sequence_parallel=false or run where TE is installed"
        )
    on_gpu = not cpu_backend.is_enabled() and torch.cuda.is_available()
    tconfig = transformer_config(cfg, use_te=use_te, on_gpu=on_gpu)
    spec = layer_spec(use_te)
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp) if vpp else [None]:
        pre, post = stage_flags(vp_stage)
        model = PolarRewardModel(
            config=tconfig,
            layer_spec=spec,
            vocab_size=cfg.model.vocab_size,
            max_sequence_length=cfg.model.max_position_embeddings,
            rotary_base=cfg.model.rotary_base,
            pre_process=pre,
            post_process=post,
            vp_stage=vp_stage,
        )
        model.model_type = ModelType.encoder_or_decoder
        if on_gpu:
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    log.info(
        "built %d chunk(s) with the %s spec, %d parameters on this rank",
        len(chunks),
        "Transformer Engine" if use_te else "local",
        sum(p.numel() for c in chunks for p in c.parameters()),
    )
    return chunks
