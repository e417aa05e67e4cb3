"""The comparison baseline: DimeRec with its item table replicated on every rank.

A plain `nn.Embedding` (sparse gradients) inside the same model, the whole of it under
DDP, and the same row-wise Adagrad the sharded trainer fuses into TorchRec's table. It
is what a team writes before reaching for TorchRec, and what the benchmarks compare the
sharded trainer with: same batches, same losses (tests/distributed/test_replicated.py),
but every rank holds the whole table and its optimizer state.
"""

from __future__ import annotations

import torch
from torch import nn

from dimerec_dist.config import ModelConfig
from dimerec_dist.data.batch import Batch
from dimerec_dist.distributed.sharded_model import padded_history
from dimerec_dist.model import DimeRec, DimeRecLosses, NoiseDraw


class ReplicatedDimeRec(nn.Module):
    def __init__(self, config: ModelConfig, num_items: int):
        super().__init__()
        self.num_items = num_items
        # Allocated, not initialised: the caller fills it (table_shards.init_table_deterministically), and
        # drawing no random numbers here leaves the dense weights as the sharded model's.
        self.item_table = nn.Embedding(
            num_items + 1, config.embedding_dim, sparse=True, _weight=torch.empty(num_items + 1, config.embedding_dim)
        )
        self.dimerec = DimeRec(config)

    def forward(self, batch: Batch, draw: NoiseDraw | None = None) -> DimeRecLosses:
        """Losses averaged over this rank's samples; DDP averages the gradients over ranks.
        `draw`: the batch's own unless given."""
        history = self.item_table(batch.kjt["history"].values())
        return self.dimerec(
            padded_history(history, batch.mask),
            batch.mask,
            self.item_table(batch.target_ids),
            batch.target_ids,
            self.item_table(batch.negative_ids),
            batch.negative_ids,
            draw=batch.draw if draw is None else draw,
            target_log_q=batch.target_log_q,
            negative_log_q=batch.negative_log_q,
        )


class SparseRowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad on sparse gradients, as FBGEMM's fused kernel computes it: each touched
    row accumulates the mean of its squared gradient, and steps by lr * g / (sqrt(sum) + eps).
    State: one float per row (not per element), like the sharded table's."""

    def __init__(self, params, lr: float, eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise ValueError("SparseRowWiseAdagrad needs sparse gradients (nn.Embedding(sparse=True))")
                state = self.state[param]
                if "sum" not in state:
                    state["sum"] = torch.zeros(param.shape[0], dtype=param.dtype, device=param.device)
                grad = param.grad.coalesce()  # repeated ids: their gradients summed, as the fused kernel does
                rows, values = grad.indices()[0], grad.values()
                state["sum"][rows] += values.pow(2).mean(dim=1)
                param[rows] -= group["lr"] * values / (state["sum"][rows].sqrt() + group["eps"]).unsqueeze(1)
