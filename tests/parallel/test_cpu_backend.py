"""The CPU backend's stream and event stand-ins, exercised the way megatron-core 0.19 uses them.

megatron-core 0.19's gradient buffers call ``torch.cuda.current_stream()`` and ``wait_event`` before every
reduction and switch to a communication stream with several distributed-optimizer instances
(param_and_grad_buffer.start_grad_sync / finish_grad_sync). Each check runs in a fresh interpreter,
because :func:`cpu_backend.enable` redirects CUDA calls for the whole process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import torch
    from megatron_polar.parallel import cpu_backend

    cpu_backend.enable()
    event = torch.cuda.Event()
    event.record()
    current = torch.cuda.current_stream()
    current.wait_event(event)                       # start_grad_sync: wait on CUDA-graph wgrad events
    comm = torch.cuda.Stream(device=torch.cuda.current_device())
    comm.wait_stream(torch.cuda.current_stream())   # communication stream waits for compute
    with torch.cuda.stream(comm):
        x = torch.ones(4, device="cuda") * 2        # work issued "on" the stream lands on the CPU
    torch.cuda.current_stream().wait_stream(comm)   # finish_grad_sync
    torch.cuda.default_stream().synchronize()
    event.synchronize()
    assert event.query() and comm.query()
    print(x.device.type, float(x.sum()))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="cpu_backend.enable() refuses to run on a GPU host")
def test_streams_and_events_are_cpu_no_ops():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cpu", "8.0"]
