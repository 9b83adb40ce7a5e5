"""Row surgery on a running `DecodeState`: requests join and leave a batch between backbone calls.

A `SlotKVCache` stores every row's entries in one `[B, H, N, D]` tensor per layer, indexed by a
shared entry counter: each backbone call appends one column, and rows that own no slot in it get an
invisible (-inf bias) entry. A server batch therefore needs three operations the offline `generate`
never does, all done here on the cache's public tensors and all leaving every other row untouched:

- `splice_row`: put a request, prefilled alone in a batch-1 state, into a free row of the running
  state (its entries at the row's start, everything after them invisible). Attention only ever sees
  a row's own finite-bias entries in their order, so the row then decodes exactly as it would alone;
- `release_row`: forget a row (finished or cancelled) so its stale entries never matter again;
- `compact`: drop invisible entries (pack each row's visible entries left, in order), so a server
  that never drains does not attend over an ever-growing column count;
- `grow_rows`: add rows to a running state, so a batch holds about as many rows as requests (idle
  rows still cost mask and attention work in every call).
"""

from __future__ import annotations

import torch

from ponderlm.backbone.attention import NEG_INF
from ponderlm.backbone.cache import SlotKVCache
from ponderlm.methods.base import DecodeState, gather_tokens, pack_active

_META = ("position", "depth", "depth_last", "bias")


def _extend(cache: SlotKVCache, length: int) -> None:
    """Grow `cache` to `length` entries; the new columns are invisible for every row."""
    if length <= cache.length:
        return
    if length > cache.capacity:
        cache._grow(max(2 * cache.capacity, length))  # the cache's own doubling growth
    cache.bias[:, cache.length:length] = NEG_INF
    cache.position[:, cache.length:length] = 0
    cache.depth[:, cache.length:length] = 0
    cache.depth_last[:, cache.length:length] = 0
    cache.length = length


def splice_row(dst: DecodeState, row: int, src: DecodeState, src_row: int = 0) -> None:
    """Copy row `src_row` of a prefilled state into row `row` of `dst` (any previous content is dropped)."""
    for dc, sc in zip(dst.caches, src.caches, strict=True):
        n = sc.length
        _extend(dc, n)
        for layer in range(dc.num_layers):
            dc.keys[layer][row, :, :n] = sc.keys[layer][src_row, :, :n]
            dc.values[layer][row, :, :n] = sc.values[layer][src_row, :, :n]
        for name in _META:
            getattr(dc, name)[row, :n] = getattr(sc, name)[src_row, :n]
        dc.bias[row, n:dc.length] = NEG_INF
    dst.next_position[row] = src.next_position[src_row]
    _set_idle(dst, row)


def release_row(state: DecodeState, row: int) -> None:
    """The row holds no request any more: its entries become invisible and its schedule idle."""
    for cache in state.caches:
        cache.bias[row, :cache.length] = NEG_INF
    _set_idle(state, row)


def _set_idle(state: DecodeState, row: int) -> None:
    if state.rows is not None:
        # Methods replace these tensors rather than writing in place; do the same.
        busy = state.rows.busy.clone()
        busy[row] = False
        state.rows.busy = busy


def grow_rows(model, state: DecodeState, batch: int) -> None:
    """Give `state` `batch` rows (more than now); the new rows are empty and idle."""
    old = state.next_position.shape[0]

    def pad(t: torch.Tensor, fresh: torch.Tensor | None = None) -> torch.Tensor:
        out = t.new_zeros((batch, *t.shape[1:])) if fresh is None else fresh
        out[:old] = t
        return out

    for cache in state.caches:
        cache.keys = [pad(k) for k in cache.keys]
        cache.values = [pad(v) for v in cache.values]
        for name in _META:
            setattr(cache, name, pad(getattr(cache, name)))
        cache.bias[old:] = NEG_INF
        cache.batch_size = batch
    state.next_position = pad(state.next_position)
    if state.rows is not None:
        # New rows start from the method's own initial values (not zeros: e.g. gates start at one).
        param = next(model.parameters())
        fresh = model.method.new_rows(batch, param.device, param.dtype)
        for name, value in state.rows.tensors().items():
            setattr(state.rows, name, pad(value, getattr(fresh, name)))


def visible_counts(cache: SlotKVCache) -> torch.Tensor:
    """Visible entries per row [B]."""
    return torch.isfinite(cache.bias[:, :cache.length]).sum(-1)


def compact(state: DecodeState) -> None:
    """Pack every row's visible entries to the front, in order, and drop the invisible columns.

    Order within a row is kept, so every mask predicate (causal entry order, position, depth,
    depth_last, bias) selects the same keys afterwards; filler columns of shorter rows are invisible."""
    for cache in state.caches:
        visible = torch.isfinite(cache.bias[:, :cache.length])
        index, present = pack_active(visible)
        n = index.shape[1]
        for layer in range(cache.num_layers):
            for store in (cache.keys, cache.values):
                t = store[layer][:, :, :cache.length]
                b, h, _, d = t.shape
                packed = t.gather(2, index[:, None, :, None].expand(b, h, n, d))
                store[layer][:, :, :n] = packed
        for name in _META:
            t = getattr(cache, name)
            packed = gather_tokens(t[:, :cache.length, None], index)[..., 0]
            t[:, :n] = packed
        cache.bias[:, :n] = torch.where(present, cache.bias[:, :n], NEG_INF)
        cache.length = n
