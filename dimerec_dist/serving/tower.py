"""The user tower: a history's item embeddings in, retrieval queries out.

GEM + DAM + the reverse sampler with a fixed number of steps, deterministic, as one
module that torch.export can capture: the serving process needs no DimeRec code, only
the exported program. x_T is an input, so a caller can reproduce the evaluation's
per-user start (evaluate.user_starts) or derive one from the history (history_start).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dimerec_dist.model import DimeRec


class UserTower(nn.Module):
    def __init__(self, dimerec: DimeRec, steps: int, query_mode: str):
        super().__init__()
        if query_mode not in ("dam", "gem", "dam+gem"):
            raise ValueError(f"query mode must be dam, gem or dam+gem, got {query_mode!r}")
        self.dimerec, self.steps, self.query_mode = dimerec, steps, query_mode

    def forward(self, history: torch.Tensor, mask: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """history (B, N, d) with zeros on padding, mask (B, N), start (B, d) -> queries (B, Q, d)."""
        return self.dimerec.queries(history, mask, self.query_mode, steps=self.steps, deterministic=True, start=start)


def export_tower(tower: UserTower, max_history: int, dim: int, path: Path | str) -> None:
    """Write the tower as a torch.export program with a dynamic batch dimension."""
    tower = tower.eval()
    example = (torch.zeros(2, max_history, dim), torch.ones(2, max_history, dtype=torch.bool), torch.randn(2, dim))
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.export.export(tower, example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    # Archived in memory, then written by Python: torch's archive writer meets a full disk with an
    # iostream error and then aborts the process in its destructor; a plain write raises OSError.
    archive = io.BytesIO()
    torch.export.save(program, archive)
    with open(path, "wb") as handle:
        handle.write(archive.getbuffer())


def load_tower(path: Path | str) -> torch.nn.Module:
    """The exported tower as a callable module. A damaged archive is refused here, before
    torch.export logs its own traceback for it."""
    if not zipfile.is_zipfile(path):
        raise ValueError("not a torch.export archive (a damaged or truncated zip file)")
    return torch.export.load(str(path)).module()


def history_start(history_ids: np.ndarray, dim: int, seed: int) -> torch.Tensor:
    """A fixed x_T for a history: drawn from a seed made of its item ids, so the same history
    always gets the same recommendations, on any server replica."""
    digest = hashlib.blake2b(
        np.ascontiguousarray(history_ids, dtype=np.int64).tobytes(),
        digest_size=8,
        key=seed.to_bytes(8, "little", signed=True),
    ).digest()
    return torch.randn(dim, generator=torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1))
