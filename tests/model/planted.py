"""A tiny planted data set and a training loop for the model's learning tests.

Items fall into categories; each user draws every item of its history and its next
item from two planted categories. A model that learns must put the target's category
among its interests, so all three losses can fall.
"""

from __future__ import annotations

import torch
from torch import nn

from dimerec_dist.config import ModelConfig
from dimerec_dist.model import DimeRec


def planted_batch(
    generator: torch.Generator, batch: int, history: int, categories: int, items_per_category: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(history ids (B, N), mask (B, N), target ids (B,)); ids start at 1 (0 is padding)."""
    pair = torch.stack([torch.randperm(categories, generator=generator)[:2] for _ in range(batch)])
    choice = torch.randint(0, 2, (batch, history + 1), generator=generator)
    category = torch.gather(pair, 1, choice)
    ids = 1 + category * items_per_category + torch.randint(0, items_per_category, category.shape, generator=generator)
    lengths = torch.randint(2, history + 1, (batch, 1), generator=generator)
    mask = torch.arange(history).unsqueeze(0) < lengths
    return ids[:, :history] * mask, mask, ids[:, history]


def train_planted(
    config: ModelConfig,
    steps: int = 150,
    seed: int = 0,
    batch: int = 64,
    negatives: int = 64,
    categories: int = 8,
    items_per_category: int = 16,
) -> list[dict[str, float]]:
    """Train a table and DimeRec jointly with Adam; return the per-step losses."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    num_items = categories * items_per_category
    table = nn.Embedding(num_items + 1, config.embedding_dim)
    nn.init.normal_(table.weight, std=0.1)
    model = DimeRec(config)
    optimizer = torch.optim.Adam([*model.parameters(), *table.parameters()], lr=3e-3)
    history_log = []
    for _ in range(steps):
        ids, mask, target = planted_batch(generator, batch, config.max_history, categories, items_per_category)
        negative_ids = torch.randint(1, num_items + 1, (negatives,), generator=generator)
        losses = model(table(ids), mask, table(target), target, table(negative_ids), negative_ids, generator=generator)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        history_log.append(losses.scalars())
    return history_log


def window_mean(log: list[dict[str, float]], key: str, start: int, stop: int) -> float:
    values = [row[key] for row in log[start:stop]]
    return sum(values) / len(values)
