"""A slot-aware KV cache.

Unlike a plain token cache, every entry is a *slot* and carries metadata that methods turn into
attention masks:

- `position` [B,N]: the RoPE position id (all slots of one token share it);
- `depth` [B,N]: the slot's step index k (0 = the token itself, k >= 1 = k-th extra step/pass);
- `depth_last` [B,N]: the last depth this entry serves. An entry normally serves its own depth
  only; AdaPonderLM's halted tokens *alias* their last active entry for all later passes by
  setting `depth_last = K`, so the entry is reused without a copy;
- `bias` [B,N]: additive attention bias of the key (0, `log w` for PonderLM-3 latent keys, or
  -inf for an entry a row does not own: padding or a slot that row skipped in a batch).

Storage is preallocated per layer and grows by doubling, so appending is amortised O(1) and no
tensor is reallocated per token. Skipped slots are simply never appended (batch 1), or appended
with bias -inf for rows that skip them while another row of the batch computes them.
"""

from __future__ import annotations

import torch

from ponderlm.backbone.attention import NEG_INF
from ponderlm.backbone.packing import pack_active


class SlotKVCache:
    # Attend over the whole batch (dummy queries for inactive rows) when at least this fraction of the
    # rows is active in a forward; below it, gather the active rows' K/V (see `reserve`).
    full_batch_attention_min_fraction = 1 / 3
    _META = ("position", "depth", "depth_last", "bias")  # per-entry metadata tensors [B, capacity]

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int = 256,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.capacity = 0
        self.length = 0
        self._pending: tuple[int, int] | None = None  # (start, count) of entries being written
        self._rows: torch.Tensor | None = None  # batch rows computed by the pending forward (None = all)
        self.full_batch_attention = False
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.position = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self.depth = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self.depth_last = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self.bias = torch.zeros(batch_size, 0, dtype=torch.float32, device=self.device)
        self._grow(max(1, capacity))

    # ------------------------------------------------------------------ storage
    def _grow(self, capacity: int) -> None:
        def grow(t: torch.Tensor, dim: int) -> torch.Tensor:
            shape = list(t.shape)
            shape[dim] = capacity
            out = torch.zeros(shape, dtype=t.dtype, device=t.device)
            out.narrow(dim, 0, t.shape[dim]).copy_(t)
            return out

        if not self.keys:
            shape = (self.batch_size, self.num_kv_heads, 0, self.head_dim)
            empty = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.keys = [empty] * self.num_layers
            self.values = [empty] * self.num_layers
        self.keys = [grow(k, 2) for k in self.keys]
        self.values = [grow(v, 2) for v in self.values]
        for name in self._META:
            setattr(self, name, grow(getattr(self, name), 1))
        self.capacity = capacity

    def _reserve_capacity(self, length: int) -> None:
        """Room for `length` entries, growing by doubling (amortised O(1) appends)."""
        if length > self.capacity:
            self._grow(max(2 * self.capacity, length))

    def nbytes(self) -> int:
        """Bytes of K/V actually holding entries (what early exit saves), not the preallocated capacity."""
        per_entry = 2 * self.num_layers * self.batch_size * self.num_kv_heads * self.head_dim
        per_entry *= self.keys[0].element_size()
        return per_entry * self.length

    # ------------------------------------------------------------------ writing
    def reserve(
        self,
        position: torch.Tensor,
        depth: torch.Tensor | int,
        bias: torch.Tensor | float = 0.0,
        depth_last: torch.Tensor | int | None = None,
        rows: torch.Tensor | None = None,
    ) -> int:
        """Announce `n` new entries (position [B,n]) that the next forward writes; returns their start index.

        rows: if given, only these batch rows are computed by the next forward (the others own no
        entry here: give them bias -inf); `update` then takes and returns K/V for those rows only.
        """
        if self._pending is not None:
            raise RuntimeError("SlotKVCache: previous entries were reserved but never committed")
        count = position.shape[1]
        start = self.length
        self._reserve_capacity(start + count)
        end = start + count
        self.position[:, start:end] = position
        self.depth[:, start:end] = depth
        self.depth_last[:, start:end] = depth if depth_last is None else depth_last
        self.bias[:, start:end] = bias
        self._pending = (start, count)
        self._rows = rows
        # With most rows active, attention runs over the whole batch (inactive rows get dummy queries
        # whose output is dropped): reading every row's K/V once is cheaper than gathering the active
        # rows' K/V, which copies that part of the cache in every layer. With few active rows, gather.
        self.full_batch_attention = (
            rows is not None and rows.numel() >= self.full_batch_attention_min_fraction * self.batch_size)
        return start

    def update(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one layer's K/V for the reserved entries; return that layer's K/V up to them ([B,H,N,D])."""
        if self._pending is None:
            raise RuntimeError("SlotKVCache.update called without reserve()")
        start, count = self._pending
        end = start + count
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self._rows is None:
            keys[:, :, start:end] = key
            values[:, :, start:end] = value
            return keys[:, :, :end], values[:, :, :end]
        # Only the active rows run: write their entries, attend over their rows of the cache.
        keys[self._rows, :, start:end] = key
        values[self._rows, :, start:end] = value
        if self.full_batch_attention:
            return keys[:, :, :end], values[:, :, :end]
        return keys[:, :, :end].index_select(0, self._rows), values[:, :, :end].index_select(0, self._rows)

    @property
    def query_rows(self) -> torch.Tensor | None:
        """Rows whose queries the pending forward computes when `update` returned the whole batch's K/V
        (the attention must place its queries at these rows); None if queries and K/V rows already match."""
        return self._rows if self._pending is not None and self._rows is not None and self.full_batch_attention \
            else None

    def commit(self) -> None:
        start, count = self._pending
        self.length = start + count
        self._pending = None

    # ------------------------------------------------------------------ row surgery (a server's running batch)
    # Requests join and leave a running batch between backbone calls (`DecodeState.splice_row` & co.). Every operation
    # keeps each other row's visible entries and their order, so every mask predicate selects the same keys.
    def extend(self, length: int) -> None:
        """Grow to `length` entries; the new columns are invisible for every row."""
        if length <= self.length:
            return
        self._reserve_capacity(length)
        for name in self._META:
            getattr(self, name)[:, self.length:length] = NEG_INF if name == "bias" else 0
        self.length = length

    def copy_row(self, row: int, src: SlotKVCache, src_row: int = 0) -> None:
        """Row `row` holds row `src_row` of `src`'s entries at the front, nothing visible after them."""
        n = src.length
        self.extend(n)
        for layer in range(self.num_layers):
            self.keys[layer][row, :, :n] = src.keys[layer][src_row, :, :n]
            self.values[layer][row, :, :n] = src.values[layer][src_row, :, :n]
        for name in self._META:
            getattr(self, name)[row, :n] = getattr(src, name)[src_row, :n]
        self.bias[row, n:self.length] = NEG_INF

    def hide_row(self, row: int) -> None:
        """Every entry of `row` becomes invisible (the row's request left)."""
        self.bias[row, :self.length] = NEG_INF

    def add_rows(self, batch: int) -> None:
        """`batch` rows (more than now); the new rows are empty (no visible entry)."""
        old = self.batch_size

        def pad(t: torch.Tensor) -> torch.Tensor:
            out = t.new_zeros((batch, *t.shape[1:]))
            out[:old] = t
            return out

        self.keys = [pad(k) for k in self.keys]
        self.values = [pad(v) for v in self.values]
        for name in self._META:
            setattr(self, name, pad(getattr(self, name)))
        self.bias[old:] = NEG_INF
        self.batch_size = batch

    def visible_counts(self) -> torch.Tensor:
        """Visible entries per row [B]."""
        return torch.isfinite(self.bias[:, :self.length]).sum(-1)

    def compact(self) -> None:
        """Pack every row's visible entries to the front, in order, and drop the columns no row needs."""
        index, present = pack_active(torch.isfinite(self.bias[:, :self.length]))
        n = index.shape[1]
        for store in (self.keys, self.values):
            for layer in range(self.num_layers):
                t = store[layer]
                b, h, _, d = t.shape
                t[:, :, :n] = t[:, :, :self.length].gather(2, index[:, None, :, None].expand(b, h, n, d))
        for name in self._META:
            t = getattr(self, name)
            t[:, :n] = t[:, :self.length].gather(1, index)
        self.bias[:, :n] = torch.where(present, self.bias[:, :n], NEG_INF)
        self.length = n

    def reorder(self, index: torch.Tensor) -> None:
        """Row b becomes row index[b] (beam search: each surviving beam continues some earlier beam's cache)."""
        if self._pending is not None:
            raise RuntimeError("SlotKVCache.reorder called between reserve() and commit()")
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        for name in self._META:
            setattr(self, name, getattr(self, name).index_select(0, index))

    # ------------------------------------------------------------------ reading
    def entry_view(self) -> dict[str, torch.Tensor]:
        """Metadata of all entries including the reserved ones: tensors [B, N]."""
        end = self.length if self._pending is None else sum(self._pending)
        return {name: getattr(self, name)[:, :end] for name in self._META}

    def set_depth_last(self, index: int | slice, depth_last: int, rows: torch.Tensor) -> None:
        """Re-point entries `index` (one or a slice) of the rows where `rows` ([B] or [B, n] bool) is set so
        they serve every depth up to `depth_last` too (alias instead of copy); other rows keep theirs."""
        self.depth_last[:, index] = torch.where(rows, depth_last, self.depth_last[:, index])
