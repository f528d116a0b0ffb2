"""Count the tensor operations that force a device-to-host copy (a host sync on a GPU).

On a GPU each of these waits for the queued kernels to finish; on CPU they cost nothing, which is why a
regression test counts them instead of timing them.
"""

from __future__ import annotations

from collections import Counter

from torch.overrides import TorchFunctionMode

SYNCING = frozenset({"item", "tolist", "__bool__", "__int__", "__index__", "__float__", "equal", "nonzero"})


class HostSyncCounter(TorchFunctionMode):
    """A torch function mode that counts the calls in :data:`SYNCING` made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.calls.values())
