"""Packing the active tokens of a batch to the left of each row (halted tokens cost nothing), and back."""

from __future__ import annotations

import torch


def pack_active(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the indices of the active tokens in order, left-packed: (index [B,n] long, present [B,n] bool).

    n is the largest active count of a row; shorter rows are filled up with indices of their inactive
    tokens (present False), so the indices of a row are distinct and scattering back is well defined.
    Inside `torch.compile` n is the full width T instead: reading the largest count on the host would break
    the graph, and the extra columns are filler like any other (same results, no compute saved).
    """
    counts = active.sum(-1)
    if torch.compiler.is_compiling():
        n = active.shape[-1]
    else:
        n = int(counts.max()) if active.numel() else 0
    order = torch.argsort((~active).to(torch.int8), dim=-1, stable=True)[:, :n]
    present = torch.arange(n, device=active.device)[None, :] < counts[:, None]
    return order, present


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B,T,...] at index [B,n] -> [B,n,...]."""
    shape = index.shape + x.shape[2:]
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(shape))


def scatter_tokens(x: torch.Tensor, index: torch.Tensor, present: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Copy of x [B,T,D] with values [B,n,D] written at index [B,n] where present."""
    current = gather_tokens(x, index)
    values = torch.where(present[..., None], values.to(x.dtype), current)
    return x.scatter(1, index[..., None].expand_as(values), values)
