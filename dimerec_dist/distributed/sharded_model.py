"""DimeRec with its item table as a TorchRec EmbeddingCollection: the module the trainer shards.

The table is the only large thing; TorchRec shards it over ranks (the plan comes from
the config) and DDP replicates the rest. One forward: look up the batch's history,
target and negatives through the table, hand the embeddings to DimeRec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import DataType, EmbeddingCollection, EmbeddingConfig

from dimerec_dist.config import ModelConfig
from dimerec_dist.data.batch import FEATURES, Batch
from dimerec_dist.distributed.collectives import all_gather_cat, all_gather_with_gradient
from dimerec_dist.model import DimeRec, DimeRecLosses, NoiseDraw
from dimerec_dist.model.sequence_windows import QueryWindows
from dimerec_dist.runtime.library_noise import drop_log_message

TABLE_NAME = "item"  # not "items": EmbeddingCollection keeps tables in a ModuleDict, which has .items()
TABLE_STATE_KEY = f"embeddings.{TABLE_NAME}.weight"


def padded_history(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Jagged history embeddings (sum of lengths, d) -> (B, N, d), zeros on padding (differentiable)."""
    b, n = mask.shape
    slots = mask.reshape(-1).nonzero().squeeze(1)
    dense = values.new_zeros(b * n, values.shape[-1]).index_copy(0, slots, values)
    return dense.view(b, n, -1)


def rows_by_feature(looked_up) -> dict[str, torch.Tensor]:
    """The table's output (a JaggedTensor per feature) as (ids of the feature, d) rows."""
    return {name: looked_up[name].values() for name in FEATURES}


def next_items(chunks: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """(C, Qc, d): the embedding of the item after each query position of the chunks (C, S, d)."""
    index = (queries + 1).clamp(max=chunks.shape[1] - 1)  # padded queries (0) stay in range
    return torch.gather(chunks, 1, index.unsqueeze(-1).expand(-1, -1, chunks.shape[-1]))


# The forward of TorchRec 1.8's modules calls torch.fx's is_fx_tracing(), which torch 2.13 logs as
# deprecated once per process: not ours to change.
drop_log_message("torch.fx._symbolic_trace", "is_fx_tracing will return true")


class ShardedDimeRec(nn.Module):
    def __init__(
        self, config: ModelConfig, num_items: int, device: torch.device | None = None, in_batch_negatives: bool = False
    ):
        device = torch.device("meta") if device is None else device
        super().__init__()
        self.num_items = num_items
        self.in_batch_negatives = in_batch_negatives
        # Meta device: the rows are materialised only by the sharder, on the rank that owns them.
        self.item_table = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=TABLE_NAME,
                    embedding_dim=config.embedding_dim,
                    num_embeddings=num_items + 1,
                    feature_names=list(FEATURES),
                    data_type=DataType.FP16 if config.table_dtype == "fp16" else DataType.FP32,
                )
            ],
            device=device,
        )
        self.dimerec = DimeRec(config)

    def embed(self, batch: Batch) -> dict[str, torch.Tensor]:
        return rows_by_feature(self.item_table(batch.kjt))

    def forward(self, batch: Batch, draw: NoiseDraw | None = None, reduction: str = "mean") -> DimeRecLosses:
        """Losses averaged over this rank's samples (see distributed/sharding.py on gradient scaling);
        `reduction="none"`: per target, in the batch's order. `draw`: the batch's own unless given.

        Shaped for TorchRec's train pipeline, which traces this method to find the table's input:
        the table reads a field of the batch, and everything after it is one call the tracer does
        not enter (losses_from_lookup, fx-wrapped)."""
        return losses_from_lookup(self, batch, self.item_table(batch.kjt), draw, reduction)

    @torch.no_grad()
    def queries(
        self,
        batch: Batch,
        mode: str,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Retrieval queries (B, Q, d): the DAM's generated interest (Q = 1), the GEM's K interests,
        or both (Q = 1 + K; an item scores its best match, see evaluate.score_block)."""
        history = padded_history(self.embed(batch)["history"], batch.mask)
        return self.dimerec.queries(history, batch.mask, mode, steps=steps, generator=generator, start=start)


@torch.fx.wrap  # one node in TorchRec's trace of ShardedDimeRec.forward: the tracer does not enter it
def losses_from_lookup(
    model: ShardedDimeRec, batch: Batch, looked_up, draw: NoiseDraw | None, reduction: str
) -> DimeRecLosses:
    """DimeRec's losses, given the table's rows for the batch's ids (`looked_up`, per feature)."""
    draw = batch.draw if draw is None else draw
    emb = rows_by_feature(looked_up)
    history = padded_history(emb["history"], batch.mask)
    if batch.is_sequence:
        windows = QueryWindows(batch.queries, batch.query_mask, model.dimerec.config.max_history)
        target = windows.select(next_items(history, batch.queries))  # the item after each query
    else:
        target = emb["target"]
    # The distinct rows spread back over the draw; F.embedding because its backward sums repeats in
    # a fixed order (indexing adds them with atomics on several CPU threads: not bitwise repeatable).
    negatives = F.embedding(batch.negative_rows, emb["negatives"])
    negative_ids, negative_log_q = batch.negative_ids, batch.negative_log_q
    if model.in_batch_negatives:
        # Every target of the global batch, from all ranks; a sample's own target is masked as a hit.
        # Gradients reach the rank that looked each target up (distributed.collectives.all_gather_with_gradient).
        negatives = torch.cat([negatives, all_gather_with_gradient(target)])
        negative_ids = torch.cat([negative_ids, all_gather_cat(batch.target_ids)])
        if negative_log_q is not None:
            negative_log_q = torch.cat([negative_log_q, all_gather_cat(batch.in_batch_log_q)])
    options = dict(draw=draw, target_log_q=batch.target_log_q, negative_log_q=negative_log_q, reduction=reduction)
    if batch.is_sequence:
        return model.dimerec.forward_sequence(
            history, batch.mask, windows, target, batch.target_ids, negatives, negative_ids, **options
        )
    return model.dimerec(history, batch.mask, target, batch.target_ids, negatives, negative_ids, **options)
