"""The per-parameter ``step`` that torch's Adam needs on resume must not reach a fused Adam.

Transformer Engine's ``FusedAdam`` (megatron-core's optimizer on GPUs) keeps ``step`` in the param
group and un-scales every per-parameter state key through a name-to-dtype map that holds only
exp_avg, exp_avg_sq and master_param; a ``step`` there makes ``state_dict`` raise KeyError, which
stopped every GPU resume. ``DocumentedFusedAdam`` re-implements that documented state handling (TE is
GPU-only); tests/gpu/test_training_gpu.py resumes with the real one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megatron_polar.checkpoint.manager import _init_optimizer_state, keeps_per_parameter_step


class DocumentedFusedAdam(torch.optim.Optimizer):
    """TE FusedAdam's state layout: group-level ``step``; per parameter only the three named states,
    each passed through ``name_to_dtype_map`` by ``state_dict`` (fused_adam.py:199-203, :478-497)."""

    def __init__(self, params, lr: float = 1e-3):
        super().__init__(params, {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.0})
        self.name_to_dtype_map = {
            "exp_avg": torch.float32,
            "exp_avg_sq": torch.float32,
            "master_param": torch.float32,
        }

    def get_unscaled_state(self, param, state_name):
        dtype = self.name_to_dtype_map[state_name]  # KeyError for any other key, as in TE
        return self.state[param][state_name].to(dtype)

    def state_dict(self):
        sd = super().state_dict()
        params = [p for g in self.param_groups for p in g["params"]]
        for index, per_param in sd["state"].items():
            sd["state"][index] = {k: self.get_unscaled_state(params[index], k) for k in per_param}
        return sd

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["exp_avg"].lerp_(p.grad, 0.1)
                state["exp_avg_sq"].lerp_(p.grad * p.grad, 0.05)
                p.sub_(group["lr"] * state["exp_avg"] / (state["exp_avg_sq"].sqrt() + group["eps"]))


def _megatron_init_state_fn(opt, config=None):
    """megatron-core 0.16.1's init_state_fn for Adam (optimizer/__init__.py:391-398): zero moments."""
    for group in opt.param_groups:
        for p in group["params"]:
            if len(opt.state[p]) == 0:
                opt.state[p]["exp_avg"] = torch.zeros_like(p.data)
                opt.state[p]["exp_avg_sq"] = torch.zeros_like(p.data)


def _wrapped(inner):
    """The attributes of megatron-core's optimizer wrapper that the checkpoint code uses."""
    return SimpleNamespace(optimizer=inner, init_state_fn=_megatron_init_state_fn, config=None)


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


def test_the_documented_fused_adam_rejects_a_step_key():
    """The re-implementation reproduces the failure the workaround caused (guards the fake itself)."""
    inner = DocumentedFusedAdam(_params())
    _megatron_init_state_fn(inner)
    for p in inner.param_groups[0]["params"]:
        inner.state[p]["step"] = torch.tensor(0.0)
    with pytest.raises(KeyError, match="step"):
        inner.state_dict()


def test_fused_adam_gets_moments_but_no_per_parameter_step():
    inner = DocumentedFusedAdam(_params())
    _init_optimizer_state(_wrapped(inner))
    sd = inner.state_dict()  # raised KeyError('step') before the fix
    assert [sorted(s) for s in sd["state"].values()] == [["exp_avg", "exp_avg_sq"]] * 2


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_torch_adam_gets_its_own_step_per_parameter(cls):
    inner = cls(_params(), lr=1e-3)
    _init_optimizer_state(_wrapped(inner))
    steps = [inner.state[p]["step"] for p in inner.param_groups[0]["params"]]
    assert [float(s) for s in steps] == [0.0, 0.0]
    assert steps[0] is not steps[1]  # Adam increments in place: a shared tensor would count twice
    inner.state_dict()


def test_decision_by_optimizer_class():
    params = _params()
    assert keeps_per_parameter_step(torch.optim.Adam(params))
    assert keeps_per_parameter_step(torch.optim.AdamW(params))
    assert not keeps_per_parameter_step(DocumentedFusedAdam(params))
    assert not keeps_per_parameter_step(torch.optim.SGD(params, lr=0.1))
    assert not keeps_per_parameter_step(None)


def test_only_transformer_engine_extra_state_may_be_absent(tmp_path):
    """A local-spec checkpoint has no TE ``_extra_state``: loading into the TE model tolerates exactly
    that (tests/gpu/test_training_gpu.py loads one into the real TE model and compares scores)."""
    from megatron_polar.checkpoint.manager import CheckpointError, check_absent_keys

    check_absent_keys(tmp_path, set())
    check_absent_keys(
        tmp_path,
        {
            "decoder.layers.self_attention.linear_qkv._extra_state",
            "decoder.layers.mlp.linear_fc2._extra_state",
        },
    )
    with pytest.raises(CheckpointError, match=r"decoder\.final_layernorm\.weight"):
        check_absent_keys(
            tmp_path, {"decoder.final_layernorm.weight", "decoder.layers.mlp.linear_fc1._extra_state"}
        )
