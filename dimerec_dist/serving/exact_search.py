"""Exact top-k over a bundle's memory-mapped table, at the speed memory can be read.

A batch of queries (U users x Q queries, d) meets the table one large block of rows at a
time: one matrix product per block that reads the mapped rows once, in their stored type
(float32 rows are multiplied where they lie; float16 and int8 blocks are widened to
float32 a block at a time), then a scale per row, the best of each user's Q queries, the
seen items masked, and the block's top-k merged into the running top-k. What depends only
on the table (1 / ||row|| for cosine scores, or int8's per-row scale) is computed once, at
load. The scoring is evaluate.score_block's, the masking and the tie-break (the smaller
id) evaluate's too, so the top-k equals dimerec-eval's.

Blocks are sized so the score matrix of a block stays near SCORE_BYTES: for one query a
block is the whole of a part of up to 16M rows, with no Python loop per small block.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from dimerec_dist.evaluation.ranking import mask_rows, merge_topk, row_scales, score_block
from dimerec_dist.serving.bundle import TablePart

SCORE_BYTES = 64 * 2**20  # the score matrix of one block (U x Q x rows x 4 bytes)
SCALE_BLOCK = 1 << 20  # rows per block when computing the row scales at load


class ExactSearch:
    def __init__(self, parts: list[TablePart], cosine: bool):
        self.parts, self.cosine = parts, cosine
        self.rows = [_mapped(part.rows) for part in parts]
        self.scales = [self._scales(part, rows) for part, rows in zip(parts, self.rows)]

    def _scales(self, part: TablePart, rows: torch.Tensor) -> torch.Tensor | None:
        """Per row: 1 / ||stored row|| for cosine (an int8 row's scale cancels), else int8's scale."""
        if self.cosine:
            return torch.cat(
                [row_scales(rows[start : start + SCALE_BLOCK], True) for start in range(0, len(rows), SCALE_BLOCK)]
            )
        return None if part.scale is None else torch.from_numpy(np.asarray(part.scale, dtype=np.float32))

    @property
    def table_bytes(self) -> int:
        """Bytes one exact query reads: every row as stored, and the per-row scales."""
        scales = sum(0 if s is None else s.numel() * 4 for s in self.scales)
        return sum(int(r.numel()) * r.element_size() for r in self.rows) + scales

    @torch.no_grad()
    def topk(self, queries: torch.Tensor, seen: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, ids), each (U, k): the best k rows for each user's queries (U, Q, d), without
        the padding row or the user's `seen` ids (U, S, padded with 0); -inf where fewer exist."""
        users, per_user, _ = queries.shape
        block = max(1 << 14, SCORE_BYTES // (4 * users * per_user))
        best_values, best_ids = None, None
        for part, rows, scale in zip(self.parts, self.rows, self.scales):
            for start in range(0, len(rows), block):
                stop = min(start + block, len(rows))
                first = part.first + start
                row_scale = None if scale is None else scale[start:stop]
                scores = mask_rows(score_block(queries, rows[start:stop], self.cosine, row_scale), first, seen)
                values, index = _topk(scores, min(k, stop - start))
                ids = index + first
                if best_values is not None:
                    values, ids = torch.cat([best_values, values], 1), torch.cat([best_ids, ids], 1)
                best_values, best_ids = merge_topk(values, ids, k)
        return best_values, best_ids


def _topk(scores: torch.Tensor, k: int, groups: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk over each row of (U, R) scores. For few long rows, each row's k best are taken
    from `groups` slices at once (topk runs a row per thread, so one long row keeps one core),
    then the best k of those: the same values, with every core at work on one query's row."""
    users, width = scores.shape
    if users >= groups or width < 64 * k * groups:
        return torch.topk(scores, k, dim=1)
    width -= width % groups  # the tail is searched on its own
    values, index = torch.topk(scores[:, :width].reshape(users, groups, -1), k, dim=2)
    index = index + torch.arange(0, width, width // groups).view(1, groups, 1)
    values, index = values.reshape(users, -1), index.reshape(users, -1)
    if width < scores.shape[1]:
        tail_values, tail_index = torch.topk(scores[:, width:], min(k, scores.shape[1] - width), dim=1)
        values, index = torch.cat([values, tail_values], 1), torch.cat([index, tail_index + width], 1)
    best, where = torch.topk(values, k, dim=1)
    return best, index.gather(1, where)


def _mapped(rows: np.ndarray) -> torch.Tensor:
    """The part's rows as a tensor sharing the memory map (no copy; never written)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we never write to it
        return torch.from_numpy(rows)
