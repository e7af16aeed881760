"""Collectives with autograd, over any process group; shapes stay on the leading dim.

- `all_to_all(x, out_splits, in_splits)`: `all_to_all_single` with uneven splits; its backward
  is the reverse all-to-all (splits swapped), so gradients go back to the rank the rows came from.
- `all_gather_rows(x)`: every rank's rows, in rank order, for any per-rank row count (zero
  included); its backward sums the incoming gradient over ranks and keeps this rank's rows,
  which is the gradient of a loss that every rank computes on the gathered tensor.

Every rank must call them in the same order with matching shapes, as with any collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _all_to_all(x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
    out = x.new_empty((sum(out_splits), *x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        return _all_to_all(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        out_splits, in_splits = ctx.splits
        return _all_to_all(grad, in_splits, out_splits, ctx.group), None, None, None


def all_to_all(x: Tensor, out_splits: list[int], in_splits: list[int], group=None) -> Tensor:
    """Send rows x[sum(in_splits[:r]) : ...] to rank r; receive out_splits[r] rows from rank r."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


def _gather(x: Tensor, sizes: list[int], group) -> Tensor:
    """Rows of every rank, rank order; gloo wants equal sizes, so pad to the largest."""
    pad = max(sizes)
    padded = x.new_zeros((pad, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int], rank: int, group) -> Tensor:
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        return _gather(x, sizes, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None, None


def gather_sizes(n: int, group=None, device: torch.device | None = None) -> list[int]:
    """Every rank's `n`, in rank order."""
    world = dist.get_world_size(group)
    mine = torch.tensor([n], dtype=torch.long, device=device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    return [int(p) for p in parts]


def all_gather_rows(x: Tensor, sizes: list[int] | None = None, group=None) -> Tensor:
    """(sum over ranks of n_r, ...) from every rank's (n_r, ...), differentiable for floats.

    `sizes`: every rank's row count when known (saves one collective)."""
    if sizes is None:
        sizes = gather_sizes(x.shape[0], group, x.device)
    rank = dist.get_rank(group)
    if x.dtype == torch.bool:  # not every backend reduces or gathers bool
        return _gather(x.to(torch.uint8), sizes, group).bool()
    if x.is_floating_point() and x.requires_grad:
        return _AllGatherRows.apply(x, sizes, rank, group)
    return _gather(x, sizes, group)


def all_reduce_sum(x: Tensor, group=None) -> Tensor:
    """A summed copy of x over the group (no autograd)."""
    out = x.detach().clone()
    dist.all_reduce(out, group=group)
    return out
