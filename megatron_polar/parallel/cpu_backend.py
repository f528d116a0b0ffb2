"""Run megatron-core's real code on CPU with gloo.

megatron-core assumes CUDA in a handful of places: RNG-state helpers, ``torch.cuda.current_device()``
and ``device="cuda"`` literals in the pipeline schedules, the gradient buffers and the optimizers,
``Tensor.cuda()``, ``torch.cuda.synchronize()``, CUDA streams and events (megatron-core 0.19's gradient
buffers) and type checks against ``'torch.cuda.FloatTensor'``.
:func:`enable` redirects exactly those to the CPU, so tensor, pipeline and data parallelism, the
distributed optimizer and ``dist_checkpointing`` run unchanged over gloo. It is the product's CPU path
(development runs, the demo, the tests), switched on in one place: ``parallel.topology`` calls it when no
GPU is present. Nothing here changes the numerics; it only moves the device.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_lock = threading.Lock()
_enabled = False
_mode: TorchFunctionMode | None = None

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
}


def _to_cpu_device(device: Any) -> Any:
    """Map any CUDA device spelling (``"cuda"``, ``"cuda:1"``, ``0``, ``torch.device("cuda")``) to CPU."""
    if isinstance(device, torch.device):
        return torch.device("cpu") if device.type == "cuda" else device
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")
    return device


class _CpuDeviceMode(TorchFunctionMode):
    """Rewrite ``device=`` arguments and ``Tensor.to("cuda")`` so factory calls land on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args:
            args = (args[0],) + tuple(_to_cpu_device(a) for a in args[1:])
        return func(*args, **kwargs)


def _patched_type(original):
    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None:
            name = original(self)
            return _CUDA_TYPE_NAMES.get(name, name)
        if isinstance(dtype, str):
            dtype = dtype.replace("torch.cuda.", "torch.")
        return original(self, dtype, non_blocking, **kwargs)

    return type_


class _CpuStream:
    """Stands in for ``torch.cuda.Stream`` on the CPU, where every operation is already ordered.

    megatron-core 0.19's gradient buffers take ``torch.cuda.current_stream()`` before each reduction
    and make it wait on CUDA-graph events (param_and_grad_buffer.start_grad_sync); with one CPU thread
    of execution there is nothing to wait for, so every wait and record is a no-op.
    """

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        self.device = torch.device("cpu")

    def wait_stream(self, _stream: Any) -> None:
        pass

    def wait_event(self, _event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return event if event is not None else _CpuEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __enter__(self) -> _CpuStream:
        return self

    def __exit__(self, *_exc: Any) -> None:
        return None


class _CpuEvent:
    """Stands in for ``torch.cuda.Event``: recorded work on the CPU is finished when recorded."""

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        pass

    def record(self, _stream: Any = None) -> None:
        pass

    def wait(self, _stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


_CPU_STREAM = _CpuStream()


def _cpu_rng_get(*_args, **_kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_rng_set(state: torch.Tensor, *_args, **_kwargs) -> None:
    torch.set_rng_state(state)


def _cpu_manual_seed(seed: int) -> None:
    torch.default_generator.manual_seed(int(seed))


@contextlib.contextmanager
def device_mode():
    """Apply the device redirection in the calling thread (torch function modes are per thread).

    :func:`enable` covers the thread that called it; a worker thread that runs the model (a server's
    batcher, say) wraps its work in this. A no-op when the backend is off, so GPU code can use it too.
    """
    if not _enabled:
        yield
        return
    with _CpuDeviceMode():
        yield


@contextlib.contextmanager
def suspended():
    """Run a region with no device redirection at all, on the hot path.

    A ``TorchFunctionMode`` costs a Python call per torch operation (about 3.5 ms of a 5.5 ms forward of
    the tiny model). The model's forward pass holds no CUDA literals, so it runs under this; the
    schedules, gradient buffers and optimizer around it keep the redirection.
    """
    if not _enabled:
        yield
        return
    with torch._C.DisableTorchFunction():
        yield


def is_enabled() -> bool:
    """True once :func:`enable` has redirected the CUDA calls in this process."""
    return _enabled


def enable() -> None:
    """Redirect megatron-core's CUDA calls to the CPU for this process (idempotent).

    Call before megatron-core builds models or optimizers. Refuses to run where CUDA is usable, so a GPU
    job can never silently fall back to the CPU.
    """
    global _enabled, _mode
    with _lock:
        if _enabled:
            return
        if torch.cuda.is_available():
            raise RuntimeError("cpu_backend.enable() called on a machine with a usable GPU")
        cuda = torch.cuda
        cuda.current_device = lambda: 0
        cuda.device_count = lambda: 1
        cuda.set_device = lambda *_a, **_k: None
        cuda.synchronize = lambda *_a, **_k: None
        cuda.empty_cache = lambda: None
        cuda.get_rng_state = _cpu_rng_get
        cuda.set_rng_state = _cpu_rng_set
        # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
        cuda.manual_seed = _cpu_manual_seed
        cuda.manual_seed_all = lambda _seed: None
        # Streams and events (megatron-core 0.19 uses them in the gradient buffers even on one stream).
        cuda.current_stream = lambda *_a, **_k: _CPU_STREAM
        cuda.default_stream = lambda *_a, **_k: _CPU_STREAM
        cuda.stream = lambda *_a, **_k: contextlib.nullcontext(_CPU_STREAM)
        cuda.Stream = _CpuStream
        cuda.Event = _CpuEvent
        torch.Tensor.cuda = lambda self, *_a, **_k: self
        torch.Tensor.type = _patched_type(torch.Tensor.type)

        from megatron.core.tensor_parallel import random as mcore_random

        mcore_random._get_cuda_rng_state = _cpu_rng_get
        mcore_random._set_cuda_rng_state = _cpu_rng_set

        _mode = _CpuDeviceMode()
        _mode.__enter__()
        _enabled = True
