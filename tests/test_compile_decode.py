"""torch.compile: packing active tokens compiles without a graph break and gives the eager result."""

from __future__ import annotations

import torch

from ponderlm.methods.base import gather_tokens, pack_active, scatter_tokens


def test_pack_active_has_no_graph_break_and_scatters_like_eager():
    active = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    x = torch.randn(3, 6, 4)
    explain = torch._dynamo.explain(pack_active)(active)
    assert explain.graph_count == 1 and explain.graph_break_count == 0

    def packed_update(x: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        index, present = pack_active(active)
        return scatter_tokens(x, index, present, gather_tokens(x, index) * 2 + 1)

    eager = packed_update(x, active)
    assert pack_active(active)[0].shape == (3, 3)  # eager packs to the largest active count
    compiled = torch.compile(packed_update, backend="eager", fullgraph=True)(x, active)  # full width inside
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    torch.testing.assert_close(eager, torch.where(active[..., None], x * 2 + 1, x), rtol=0, atol=0)
    torch._dynamo.reset()
