"""CPU tools run on GPU hosts: an explicit CPU/gloo request routes to the CPU, never to a refusal.

``convert import-hf`` (``--device cpu`` by default), the demo's evaluation and its pipeline ask for the
CPU; on a machine with a GPU the CPU backend refused to start (it guards GPU jobs against a silent CPU
fallback), so they crashed there.
"""

from __future__ import annotations

import pytest

from megatron_polar.parallel.topology import plan_device
from megatron_polar.utils.errors import ConfigError
from tests.support.launcher import run_distributed


def test_gloo_on_a_gpu_host_runs_on_the_cpu_and_hides_the_gpu():
    plan = plan_device("gloo", gpu_present=True)
    assert not plan.gpu and plan.hide_gpus


@pytest.mark.parametrize(
    "backend,gpu_present,gpu,hide",
    [
        ("auto", True, True, False),
        ("auto", False, False, False),
        ("nccl", True, True, False),
        ("gloo", False, False, False),
    ],
)
def test_other_routes(backend, gpu_present, gpu, hide):
    plan = plan_device(backend, gpu_present)
    assert (plan.gpu, plan.hide_gpus) == (gpu, hide)


def test_nccl_without_a_gpu_names_the_key():
    with pytest.raises(ConfigError, match="parallel.backend=nccl"):
        plan_device("nccl", gpu_present=False)


def build_on_pretend_gpu_host() -> dict:
    """A process where CUDA reports itself usable builds the model on the CPU when asked for ``cpu``."""
    import torch

    torch.cuda.is_available = lambda: True  # the GPU host, as the process sees it before routing
    from megatron_polar.config import load_config
    from megatron_polar.model.standalone import build_single
    from megatron_polar.parallel import cpu_backend

    model = build_single(load_config(["model=tiny", "train.precision=fp32"]), device="cpu")
    return {
        "device": str(next(model.parameters()).device),
        "cpu_backend": cpu_backend.is_enabled(),
        "cuda_reported": torch.cuda.is_available(),
    }


@pytest.mark.distributed
def test_cpu_tool_starts_on_a_gpu_host():
    [res] = run_distributed(build_on_pretend_gpu_host, 1, timeout=300)
    assert res == {"device": "cpu", "cpu_backend": True, "cuda_reported": False}
