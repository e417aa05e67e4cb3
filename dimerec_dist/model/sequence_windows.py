"""Which items each query of a chunk reads, for the GEMs' one-pass sequence forward.

A chunk is a run of one user's items, left-aligned in a row of (B, S). A query is a
chunk position q whose next item is a training target; it reads the window
chunk[max(0, q - N + 1) .. q]: the last N items up to q, or fewer at the chunk's start.
The data path lays chunks out so that this window is exactly what the per-prefix mode
would read for the same target (data/samples.py, `cut_chunks`).

Queries are held per chunk, padded: queries (B, Qc) with query_mask (B, Qc). The flat
order of the real queries (row by row) is the order of the batch's targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class QueryWindows:
    queries: Tensor  # (B, Qc) chunk positions of the queries; 0 on padding
    query_mask: Tensor  # (B, Qc) True on real queries
    window: int  # N: the most items a query reads

    @property
    def starts(self) -> Tensor:
        """(B, Qc) the first chunk position of each query's window."""
        return (self.queries - self.window + 1).clamp(min=0)

    def band(self, length: int) -> tuple[Tensor, Tensor]:
        """(B, Qc, S) whether chunk position j is in query q's window, and its recency q - j
        (0 for q itself), clamped into 0..N-1 outside the window so it can index a table."""
        positions = torch.arange(length, device=self.queries.device)
        recency = self.queries.unsqueeze(-1) - positions  # B,Qc,S
        inside = (recency >= 0) & (recency < self.window) & self.query_mask.unsqueeze(-1)
        return inside, recency.clamp(0, self.window - 1)

    def select(self, per_query: Tensor) -> Tensor:
        """(B, Qc, ...) -> (Q, ...): the real queries, in target order."""
        return per_query[self.query_mask]

    def gather_index(self, length: int) -> tuple[Tensor, Tensor, Tensor]:
        """Each real query's window as rows of the flattened chunks (B * S, S = `length`), left-aligned
        like a per-prefix history: (index (Q, N), valid (Q, N), recency (Q, N))."""
        rows = torch.arange(self.queries.shape[0], device=self.queries.device)
        rows = rows.unsqueeze(1).expand_as(self.queries)[self.query_mask]
        queries, starts = self.select(self.queries), self.select(self.starts)
        lengths = queries - starts + 1
        slots = torch.arange(self.window, device=queries.device)
        valid = slots < lengths.unsqueeze(1)
        index = rows.unsqueeze(1) * length + torch.where(valid, starts.unsqueeze(1) + slots, starts.unsqueeze(1))
        recency = (lengths.unsqueeze(1) - 1 - slots).clamp(min=0)
        return index, valid, recency


def per_prefix_windows(items: Tensor, mask: Tensor, windows: QueryWindows) -> tuple[Tensor, Tensor]:
    """The per-prefix histories (Q, N, d) and masks (Q, N) of every query: what the per-prefix
    forward reads for the same targets. Tests compare the two modes through it."""
    index, valid, _ = windows.gather_index(items.shape[1])
    history = items.flatten(0, 1)[index] * valid.unsqueeze(-1)
    return history, valid
