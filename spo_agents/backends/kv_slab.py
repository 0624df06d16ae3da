"""A pre-allocated key/value cache for a batch whose rows come and go (the decode scheduler's).

Why: transformers' `DynamicCache` appends a decode step's keys and values with `torch.cat`,
which copies the whole cache of every layer at every step (O(length) per token, the memory
traffic of a second forward on CPU), and dropping or adding rows copies it again.
`StaticCache` avoids the copy but has a fixed batch. The slab keeps, per layer, one buffer
[rows, kv_heads, columns, head_dim] allocated once (columns grow by doubling, rarely) and a
[rows, columns] attention mask:

- All active rows are rows 0..n-1 and share one write column, `length`: a decode step writes
  column `length` of every row in place and attends over columns 0..length. Rows are aligned on
  the right, so a row's own tokens end at `length`; columns before its first token, and any
  hole in the middle (a prompt prefilled as shared prefix + suffix), are masked out. Positions
  ids are kept per row by the scheduler, so masked columns never shift RoPE.
- New rows are written below the active ones with their prompt's columns ending at `length`
  (if a prompt is longer than `length`, every row moves right once to make room).
- Finished rows leave by moving the last rows into their places (one indexed copy per layer,
  of the moved rows only); columns that are masked for every remaining row are trimmed when
  the buffer would otherwise have to grow.

`SlabCache` is the transformers `Cache` view of the first n rows for one forward pass.
Plain key/value layers only (no sliding-window or linear-attention layers).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["KVSlab", "SlabCache"]


class KVSlab:
    """Per-layer key/value buffers and the attention mask of up to `max_rows` rows."""

    def __init__(self, layer_keys: list[torch.Tensor], max_rows: int, rows: int = 1, columns: int = 64):
        """Buffers shaped like `layer_keys` ([any, kv_heads, any, head_dim] per layer), room for
        `rows` rows and `columns` columns to start with; rows grow up to `max_rows`."""
        first = layer_keys[0]
        self.max_rows, self.capacity, self.columns = max_rows, min(max_rows, _grown(1, rows)), _grown(16, columns)
        self.device = first.device
        shape = (self.capacity, first.shape[1], self.columns, first.shape[3])
        self.keys = [torch.zeros(shape, dtype=k.dtype, device=k.device) for k in layer_keys]
        self.values = [torch.zeros(shape, dtype=k.dtype, device=k.device) for k in layer_keys]
        self.mask = torch.zeros(self.capacity, self.columns, dtype=torch.long, device=self.device)
        self.rows = 0  # active rows: 0..rows-1
        self.length = 0  # columns in use; the next token of every row is written at this column

    # ------------------------------------------------------------------ columns
    def _resize(self, columns: int, shift: int = 0, capacity: int | None = None) -> None:
        """Reallocate to `columns` columns (and `capacity` rows), moving the used columns `shift`
        to the right."""
        n, used, capacity = self.rows, self.length, capacity or self.capacity
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = old.new_zeros(capacity, old.shape[1], columns, old.shape[3])
                new[:n, :, shift: shift + used] = old[:n, :, :used]
                buffers[i] = new
        mask = self.mask.new_zeros(capacity, columns)
        mask[:n, shift: shift + used] = self.mask[:n, :used]
        self.mask, self.columns, self.capacity, self.length = mask, columns, capacity, used + shift

    def _shift(self, amount: int) -> None:
        """Move the used columns of the active rows `amount` right (< 0: left)."""
        n, used = self.rows, self.length
        src = slice(max(0, -amount), used)
        dst = slice(max(0, amount), used + amount)
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[:n, :, dst] = buffer[:n, :, src].clone()
        self.mask[:n, dst] = self.mask[:n, src].clone()
        if amount > 0:
            self.mask[:n, :amount] = 0
        self.length = used + amount

    def make_room(self, needed_left: int, needed_right: int) -> None:
        """Ensure `needed_left` columns end at `length` and `needed_right` free columns follow."""
        if needed_left > self.length:  # a longer prompt: everything moves right once
            shift = needed_left - self.length
            if self.length + shift + needed_right > self.columns:
                self._resize(_grown(self.columns, self.length + shift + needed_right), shift)
            else:
                self._shift(shift)
        if self.length + needed_right <= self.columns:
            return
        first = int(self.mask[: self.rows, : self.length].any(dim=0).to(torch.int8).argmax()) if self.rows else self.length
        keep_left = max(needed_left, self.length - first)
        if keep_left < self.length and keep_left + needed_right <= self.columns:
            self._shift(keep_left - self.length)  # trim columns masked for every row
        else:
            self._resize(_grown(self.columns, self.length + needed_right))

    # ------------------------------------------------------------------ rows
    def add_rows(self, layer_keys: list[torch.Tensor], layer_values: list[torch.Tensor], mask: torch.Tensor) -> int:
        """Append rows whose cache is [k, heads, width, head_dim] per layer (right-aligned at
        `length`) with their [k, width] mask; returns the index of the first new row."""
        k, width = mask.shape
        if self.rows + k > self.max_rows:
            raise ValueError(f"{self.rows} + {k} rows exceed the slab's {self.max_rows}")
        if self.rows + k > self.capacity:
            self._resize(self.columns, 0, min(self.max_rows, _grown(self.capacity, self.rows + k)))
        self.make_room(width, 1)
        start, end, left = self.rows, self.rows + k, self.length - width
        for buffer, new in zip(self.keys, layer_keys):
            buffer[start:end, :, left: self.length] = new
        for buffer, new in zip(self.values, layer_values):
            buffer[start:end, :, left: self.length] = new
        self.mask[start:end, :left] = 0
        self.mask[start:end, left: self.length] = mask
        self.rows = end
        return start

    def remove_rows(self, finished: list[int]) -> list[tuple[int, int]]:
        """Drop rows `finished`; returns the (source, destination) moves that filled the holes,
        so the caller can move its own per-row state the same way."""
        gone = set(finished)
        remaining = self.rows - len(gone)
        holes = [r for r in sorted(gone) if r < remaining]
        sources = [r for r in range(remaining, self.rows) if r not in gone]
        if holes:
            dst = torch.tensor(holes, device=self.device)
            src = torch.tensor(sources, device=self.device)
            used = self.length
            for buffers in (self.keys, self.values):
                for buffer in buffers:
                    buffer[:, :, :used].index_copy_(0, dst, buffer[:, :, :used].index_select(0, src))
            self.mask[:, :used].index_copy_(0, dst, self.mask[:, :used].index_select(0, src))
        self.rows = remaining
        if remaining == 0:
            self.length = 0
        return list(zip(sources, holes))

    def view(self) -> "SlabCache":
        """The Cache for one decode step of the active rows (writes column `length`)."""
        self.make_room(0, 1)
        self.mask[: self.rows, self.length] = 1
        return SlabCache(self)

    def step_mask(self) -> torch.Tensor:
        return self.mask[: self.rows, : self.length + 1]

    def advance(self) -> None:
        self.length += 1


def _grown(columns: int, needed: int) -> int:
    while columns < needed:
        columns *= 2
    return columns


class _SlabLayer(CacheLayerMixin):
    is_sliding = False
    is_compileable = False

    def __init__(self, slab: KVSlab, index: int):
        super().__init__()
        self.slab, self.index, self.is_initialized = slab, index, True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        slab, n, at = self.slab, self.slab.rows, self.slab.length
        width = key_states.shape[-2]
        keys, values = slab.keys[self.index], slab.values[self.index]
        keys[:n, :, at: at + width] = key_states
        values[:n, :, at: at + width] = value_states
        return keys[:n, :, : at + width], values[:n, :, : at + width]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.slab.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.slab.length

    def get_max_length(self) -> int:
        return -1


class SlabCache(Cache):
    """transformers' view of a KVSlab's active rows for one forward pass."""

    def __init__(self, slab: KVSlab):
        super().__init__(layers=[_SlabLayer(slab, i) for i in range(len(slab.keys))])
