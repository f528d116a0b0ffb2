"""RoPE on THD-packed rows: a table sized by the longest sequence, and no per-layer host syncs."""

from __future__ import annotations

import pytest
import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer import TransformerConfig

from tests.model.host_syncs import HostSyncCounter
from tests.model.workers import reference_fused_rope_thd, rope_thd_forward
from tests.support.launcher import run_distributed


class _CP:
    """A context-parallel group of one, as megatron-core's RoPE helpers ask it."""

    def size(self) -> int:
        return 1

    def rank(self) -> int:
        return 0


def _freqs(n: int, d: int = 8) -> torch.Tensor:
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    f = torch.outer(torch.arange(n).float(), inv)
    return torch.cat((f, f), -1)[:, None, None, :]


def _unfused_thd_syncs(seqlens: list[int], table: int) -> int:
    cfg = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, apply_rope_fusion=False)
    cu = torch.tensor([0, *torch.tensor(seqlens).cumsum(0).tolist()], dtype=torch.int32)
    t = torch.randn(sum(seqlens), 2, 8)
    with HostSyncCounter() as c:
        apply_rotary_pos_emb(t, _freqs(table), cfg, cu_seqlens=cu, cp_group=_CP())
    return c.total


def test_megatron_unfused_thd_syncs_per_sequence_with_a_row_sized_table():
    """The mechanism (megatron-core 0.16.1 rope_utils.py:204-218): a table as long as the row makes
    ``_apply_rotary_pos_emb_thd`` call ``.item()`` once per sequence; one sized by the longest sequence
    does a fixed two syncs whatever the number of sequences."""
    few, many = [30, 34], [5, 7, 9, 11, 13, 19]
    assert _unfused_thd_syncs(many, table=64) - _unfused_thd_syncs(few, table=64) == len(many) - len(few)
    assert _unfused_thd_syncs(many, table=max(many)) == _unfused_thd_syncs(few, table=max(few)) == 2


def test_reference_fused_rope_restarts_positions_per_sequence():
    seqlens = [3, 5, 4]
    cu = torch.tensor([0, 3, 8, 12], dtype=torch.int32)
    t = torch.randn(12, 2, 8, dtype=torch.float64)
    f = _freqs(5).double()
    got = reference_fused_rope_thd(t, cu, f)
    cfg = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2)
    start = 0
    for n in seqlens:  # each sequence on its own, bshd, positions 0..n-1
        want = apply_rotary_pos_emb(t[start : start + n, None], f[:n], cfg, cp_group=_CP()).squeeze(1)
        torch.testing.assert_close(got[start : start + n], want)
        start += n


@pytest.fixture(scope="module")
def thd_runs():
    [out] = run_distributed(rope_thd_forward, 1, (2, 4), timeout=300)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("fused", [False, True])
def test_thd_rows_match_masked_rows(thd_runs, fused):
    for layers in (2, 4):
        run = thd_runs[(layers, fused)]
        assert run["table_length"] == thd_runs["max_seqlen"] < thd_runs["row_tokens"]
        torch.testing.assert_close(run["thd"], run["masked"], atol=1e-5, rtol=1e-5)


@pytest.mark.distributed
def test_no_per_sequence_host_syncs_and_none_per_layer_when_fused(thd_runs):
    def syncs(layers: int, fused: bool) -> int:
        return sum(thd_runs[(layers, fused)]["syncs"].values())

    # Unfused: megatron-core's .tolist() and table-length comparison, for q and k, in every layer; the
    # per-sequence .item() calls that a row-sized table caused are gone.
    assert (syncs(4, False) - syncs(2, False)) / 2 == 4, thd_runs[(4, False)]["syncs"]
    # megatron-core >= 0.17 adds one ``int(cu_seqlens[-1].item())`` per call (``rope_utils.py`` 0.19.2 line
    # 224, for q and k): at most 2 per layer, never one per sequence (line 239's offset mode stays off).
    assert thd_runs[(4, False)]["syncs"].get("item", 0) <= 2 * 4, thd_runs[(4, False)]["syncs"]
    # Fused (TE's kernel reads cu_seqlens on the device): the count does not grow with layers.
    assert syncs(4, True) == syncs(2, True)
