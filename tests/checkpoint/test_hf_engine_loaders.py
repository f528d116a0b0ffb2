"""The ``internlm2`` export against the weight-loading rules of vLLM, SGLang and lmdeploy, re-implemented.

None of the three engines installs here (they need a GPU build), so their documented loading rules are
written out below from their source and applied to our tensor names and tensors:

* vLLM 0.33.0 ``vllm/model_executor/models/internlm2.py``: ``InternLM2Model.hf_to_vllm_mapper``
  (lines 251-257) stacks ``.w1``/``.w3`` into ``.gate_up_proj`` shards 0/1, every other name loads as it is
  into the module tree (``params_dict[name]``, an unknown name is an error); ``split_qkv`` (lines 158-181)
  views the ``wqkv`` output as ``(kv_heads, q_per_kv + 2, head_dim)`` and splits it ``[q_per_kv, 1, 1]``;
  ``InternLM2ForRewardModel`` (lines 388-440) adds ``v_head`` and has no ``output`` layer.
* SGLang 0.5.23 ``sglang/srt/models/internlm2.py`` ``load_weights`` (lines 311-356): substring
  ``"w1"``/``"w3"`` -> ``"gate_up_proj"``; ``wqkv`` viewed ``(-1, 2 + kv_groups, head_dim, hidden)`` and
  split ``[kv_groups, 1, 1]`` into the q, k, v shards; ``internlm2_reward.py`` line 42 ``v_head``.
* lmdeploy ``lmdeploy/pytorch/models/internlm2_reward.py`` ``load_weights`` (lines 117-148):
  ``.w1``/``.w3`` -> ``.gate_up_proj``; ``wqkv`` split with layout ``hgd``
  (``lmdeploy/pytorch/nn/linear/default.py`` lines 265-273: ``unflatten(0, (kv_heads, -1, head_dim))``,
  q = all but the last two, k = second to last, v = last).
"""

from __future__ import annotations

import torch

from megatron_polar.checkpoint.hf_layouts import LAYOUTS, TrunkShape
from tests.support import hf_fixtures as fx

# POLAR-7B's shape: the names (not the tensors) of a full-size export.
POLAR_7B = TrunkShape(
    num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8, ffn_hidden_size=14336, vocab_size=92544
)


def exported_names(shape: TrunkShape) -> list[str]:
    return [name for name, _ in LAYOUTS["internlm2"].from_mcore(shape, lambda n: None)]


def engine_parameters(num_layers: int) -> set[str]:
    """The parameter names of the engines' InternLM2ForRewardModel module trees (identical in all three)."""
    names = {"model.tok_embeddings.weight", "model.norm.weight", "v_head.weight"}
    for i in range(num_layers):
        p = f"model.layers.{i}."
        names |= {
            p + "attention.wqkv.weight",
            p + "attention.wo.weight",
            p + "feed_forward.gate_up_proj.weight",
            p + "feed_forward.w2.weight",
            p + "attention_norm.weight",
            p + "ffn_norm.weight",
        }
    return names


def vllm_target(name: str) -> tuple[str, int | None]:
    for old, (new, shard) in {".w1": (".gate_up_proj", 0), ".w3": (".gate_up_proj", 1)}.items():
        if old in name:
            return name.replace(old, new), shard
    return name, None


def sglang_target(name: str) -> tuple[str, int | None]:
    for param, weight, shard in (("gate_up_proj", "w1", 0), ("gate_up_proj", "w3", 1)):
        if weight in name:
            return name.replace(weight, param), shard
    return name, None


def lmdeploy_target(name: str) -> tuple[str, int | None]:
    for param, weight, shard in ((".gate_up_proj", ".w1", 0), (".gate_up_proj", ".w3", 1)):
        if weight in name:
            return name.replace(weight, param), shard
    return name, None


def test_every_exported_tensor_loads_into_each_engine_and_fills_it():
    names = exported_names(POLAR_7B)
    params = engine_parameters(POLAR_7B.num_layers)
    for engine, target in (("vLLM", vllm_target), ("SGLang", sglang_target), ("lmdeploy", lmdeploy_target)):
        filled: dict[str, set] = {}
        for name in names:
            param, shard = target(name)
            assert param in params, f"{engine} has no parameter {param} for exported tensor {name}"
            filled.setdefault(param, set()).add(shard)
        assert set(filled) == params, f"{engine} parameters left empty: {sorted(params - set(filled))[:3]}"
        gate_up = [p for p in params if p.endswith("gate_up_proj.weight")]
        assert all(filled[p] == {0, 1} for p in gate_up), engine
        assert all(filled[p] == {None} for p in params - set(gate_up)), engine
    assert "output.weight" not in names  # the reward model has no LM head; vLLM's is a StageMissingLayer


def _vllm_split_qkv(qkv_out: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    s = qkv_out.shape[0]
    q, k, v = torch.split(
        qkv_out.view(s, kv_heads, heads // kv_heads + 2, head_dim), [heads // kv_heads, 1, 1], -2
    )
    return q.reshape(s, -1), k.reshape(s, -1), v.reshape(s, -1)


def _sglang_split_weight(w: torch.Tensor, heads: int, kv_heads: int, head_dim: int):
    groups = heads // kv_heads
    wq, wk, wv = torch.split(w.view(-1, 2 + groups, head_dim, w.shape[-1]), [groups, 1, 1], dim=1)
    return wq.reshape(-1, w.shape[-1]), wk.reshape(-1, w.shape[-1]), wv.reshape(-1, w.shape[-1])


def _lmdeploy_split_hgd(w: torch.Tensor, kv_heads: int, head_dim: int):
    w = w.unflatten(0, (kv_heads, -1, head_dim))
    return w[:, :-2].flatten(0, 2), w[:, -2].flatten(0, 1), w[:, -1].flatten(0, 1)


def test_exported_wqkv_splits_back_into_the_source_projections_in_each_engine(work, seqcls_dir, seqcls_ckpt):
    """The exported ``wqkv`` of a Llama-sourced model gives the Llama q/k/v under each engine's split."""
    from safetensors.torch import load_file

    from megatron_polar.checkpoint.hf_export import export_hf

    out = export_hf(seqcls_ckpt, work / "ex-engine-split", fmt="internlm2")
    src, ours = load_file(seqcls_dir / "model.safetensors"), fx.load_dir(out)
    x = torch.randn(5, fx.HIDDEN, generator=torch.Generator().manual_seed(0))
    d = fx.HIDDEN // fx.HEADS
    for i in range(fx.LAYERS):
        p = f"model.layers.{i}.self_attn."
        q, k, v = (src[p + f"{n}_proj.weight"] for n in "qkv")
        wqkv = ours[f"model.layers.{i}.attention.wqkv.weight"]
        for got, want in zip(
            _vllm_split_qkv(x @ wqkv.T, fx.HEADS, fx.KV_HEADS, d), (x @ q.T, x @ k.T, x @ v.T)
        ):
            torch.testing.assert_close(got, want)
        for got, want in zip(_sglang_split_weight(wqkv, fx.HEADS, fx.KV_HEADS, d), (q, k, v)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        for got, want in zip(_lmdeploy_split_hgd(wqkv, fx.KV_HEADS, d), (q, k, v)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert set(ours) == set(
        exported_names(TrunkShape(fx.LAYERS, fx.HIDDEN, fx.HEADS, fx.KV_HEADS, fx.FFN, fx.VOCAB))
    )


def test_released_dynamic_rope_scaling_leaves_vllm_and_our_remote_code_exact_but_not_sglang():
    """``rope_scaling: dynamic x2`` as released, read by each engine's RoPE-base rule for short inputs.

    vLLM 0.33.0 ``rotary_embedding/__init__.py`` lines 224-227 (``max_trained_positions`` defaults to
    ``max_position``) and ``dynamic_ntk_scaling_rope.py`` lines 58-65; SGLang 0.5.23
    ``rotary_embedding/rope_variant.py`` lines 880-887 (``max_len = max_position * factor``, applied
    to every position). docs/conversion.md gives SGLang the override.
    """
    from megatron_polar.checkpoint.remote_code.configuration_internlm2 import InternLM2Config
    from megatron_polar.checkpoint.remote_code.modeling_internlm2 import rope_base

    theta, factor, max_pos, head_dim = 5e7, 2.0, 262144, 128
    exponent = head_dim / (head_dim - 2)
    vllm_base = theta * ((factor * max_pos / max_pos) - (factor - 1)) ** exponent
    sglang_base = theta * ((factor * (max_pos * factor) / max_pos) - (factor - 1)) ** exponent
    assert vllm_base == theta
    assert sglang_base / theta > 3.0  # every position rotates differently in SGLang
    cfg = InternLM2Config(
        hidden_size=4096,
        num_attention_heads=32,
        rope_theta=theta,
        max_position_embeddings=max_pos,
        rope_scaling={"type": "dynamic", "factor": factor},
    )
    assert rope_base(cfg, 16384) == theta and rope_base(cfg, max_pos) == theta
    assert rope_base(cfg, 2 * max_pos) == theta * (2 * factor - (factor - 1)) ** exponent
