"""Row surgery on a running `DecodeState`: requests join and leave a batch between backbone calls.

A `SlotKVCache` stores every row's entries in one `[B, H, N, D]` tensor per layer, indexed by a
shared entry counter: each backbone call appends one column, and rows that own no slot in it get an
invisible (-inf bias) entry. A server batch therefore needs operations the offline `generate` never
does, each leaving every other row untouched (the cache's own row-surgery methods do the tensor work):

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

from ponderlm.methods.base import DecodeState


def splice_row(dst: DecodeState, row: int, src: DecodeState, src_row: int = 0) -> None:
    """Copy row `src_row` of a prefilled state into row `row` of `dst` (any previous content is dropped)."""
    for dst_cache, src_cache in zip(dst.caches, src.caches, strict=True):
        dst_cache.copy_row(row, src_cache, src_row)
    dst.next_position[row] = src.next_position[src_row]
    _set_idle(dst, row)


def release_row(state: DecodeState, row: int) -> None:
    """The row holds no request any more: its entries become invisible and its schedule idle."""
    for cache in state.caches:
        cache.hide_row(row)
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
    for cache in state.caches:
        cache.add_rows(batch)
    position = state.next_position.new_zeros(batch)
    position[:old] = state.next_position
    state.next_position = position
    if state.rows is not None:
        # New rows start from the method's own initial values (not zeros: e.g. gates start at one).
        param = next(model.parameters())
        fresh = model.method.new_rows(batch, param.device, param.dtype)
        for name, value in state.rows.tensors().items():
            getattr(fresh, name)[:old] = value
        state.rows = fresh


def compact(state: DecodeState) -> None:
    """Drop invisible entries (each row keeps its visible ones, in order), so a server that never drains does
    not attend over an ever-growing column count."""
    for cache in state.caches:
        cache.compact()
