"""The collectives the trainer and the evaluation need, on any backend (gloo has no
reduce-scatter, so the differentiable gather's backward is an all-reduce)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 the tensors of all ranks (same shape on every rank)."""
    if dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _AllGatherWithGradient(torch.autograd.Function):
    """all_gather_cat that passes gradients back: each rank gets the sum over ranks of the
    gradient of its own rows (an all-reduce, which gloo has, unlike reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return all_gather_cat(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        if dist.get_world_size() > 1:
            dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate the ranks' tensors along dim 0, differentiably (same shape on every rank)."""
    return _AllGatherWithGradient.apply(tensor)


def all_reduce_max_int(value: int, device: torch.device) -> int:
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())
