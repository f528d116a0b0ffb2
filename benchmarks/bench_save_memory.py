"""Projected host memory per rank at checkpoint save, POLAR-7B at TP2 x PP1 x DP456 (the paper's 912 GPUs).

Computed from the code paths, with the exact parameter count of ``conf/model/polar_7b.yaml``
(``megatron_polar.planning.params``):

* before, megatron-core's ``fully_reshardable`` (``distrib_optimizer.py`` 1404-1537): every DP rank
  all-gathers fp32 ``param``, ``exp_avg`` and ``exp_avg_sq`` of its whole TP/PP slice
  (``get_parameter_state_dp_zero(return_on_all_ranks=True)``): 3 x 4 bytes x slice;
* after, ``megatron_polar.checkpoint.optim_shards``: each rank hands the writer views of its own
  distributed-optimizer shard, 3 x 4 bytes x ceil(slice / DP) (the host staging of those tensors on a GPU;
  nothing at all is allocated on the CPU path). ``tests/checkpoint/test_optim_shards.py`` measures the
  same two quantities on a real DP2 optimizer.

The model weights (bf16) are written by the DP-rank-0 replica of each TP/PP slice, unchanged by the
format: listed apart. Run: ``python benchmarks/bench_save_memory.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from megatron_polar.config import load_config  # noqa: E402
from megatron_polar.planning.params import count_parameters, stage_parameters  # noqa: E402

GB = 1e9
FP32_STATES = 3  # fp32 main param, exp_avg, exp_avg_sq


def save_memory(model: str = "polar_7b", tp: int = 2, pp: int = 1, dp: int = 456) -> dict:
    """Host bytes per rank that a save allocates for the optimizer state, before and after, and the
    bf16 model slice the DP-rank-0 replicas write."""
    counts = count_parameters(load_config([f"model={model}"]).model)
    slice_params = max(s.per_gpu for s in stage_parameters(counts, tp, pp))
    own = -(-slice_params // dp)
    return {
        "model": model,
        "layout": {"tp": tp, "pp": pp, "dp": dp},
        "parameters": counts.total,
        "slice_parameters": slice_params,
        "optimizer_before_bytes": FP32_STATES * 4 * slice_params,
        "optimizer_after_bytes": FP32_STATES * 4 * own,
        "model_slice_bf16_bytes_dp_rank0": 2 * slice_params,
    }


def main() -> dict:
    """Print the projection as one line; return the figures."""
    r = save_memory()
    lay = r["layout"]
    print(
        f"save host memory per rank, 7B TP{lay['tp']} x PP{lay['pp']} x DP{lay['dp']}: optimizer state "
        f"{r['optimizer_before_bytes'] / GB:.1f} GB (fully_reshardable) -> {r['optimizer_after_bytes'] / GB:.2f} GB "
        f"(own shard, target <= 8 GB); bf16 weights on DP-rank-0 replicas {r['model_slice_bf16_bytes_dp_rank0'] / GB:.1f} GB"
    )
    return r


if __name__ == "__main__":
    main()
