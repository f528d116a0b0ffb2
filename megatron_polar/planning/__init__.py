"""Layout planning: parameter counts, per-GPU memory, FLOPs and time projections (no GPU needed)."""

from megatron_polar.planning.layout import Hardware, Plan, plan_layout
from megatron_polar.planning.memory import MemoryEstimate, Recompute
from megatron_polar.planning.params import ParamCounts, count_parameters

__all__ = [
    "Hardware",
    "MemoryEstimate",
    "ParamCounts",
    "Plan",
    "Recompute",
    "count_parameters",
    "plan_layout",
]
