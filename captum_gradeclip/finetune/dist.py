"""Gathering the global batch across processes, with gradients (the process group itself is
:mod:`captum_gradeclip.distributed`'s :class:`~captum_gradeclip.distributed.Ranks`).

Every process computes the loss of the *global* batch: embeddings are gathered from all processes
(:func:`gather_rows`, differentiable: the backward sums the gradients of every process' copy of
the loss and returns each process its own rows). Each process' gradient is then ``world`` times its
share, and ``DistributedDataParallel``'s average makes it the single-process gradient of the
global batch exactly (up to floating-point order).
"""

from __future__ import annotations

from typing import Any, List

import torch
import torch.distributed as dist
from torch import Tensor

from ..distributed import Ranks


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # x: (n, ...) the same n on every process
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_rows(x: Tensor, d: Ranks) -> Tensor:
    """``(n_r, ...)`` on each process -> ``(sum_r n_r, ...)`` in rank order, differentiable (rows
    may differ in number between processes). One process: ``x`` itself."""
    if d.world == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(d.world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes_l = [int(s) for s in sizes]
    top = max(sizes_l)
    padded = torch.cat([x, x.new_zeros(top - x.shape[0], *x.shape[1:])]) if top > x.shape[0] else x
    full = _GatherWithGrad.apply(padded)
    keep = torch.cat([torch.arange(r * top, r * top + n, device=x.device) for r, n in enumerate(sizes_l)])
    return full[keep]


def gather_objects(items: List[Any], d: Ranks) -> List[Any]:
    """Concatenate each process' list (e.g. captions), in rank order."""
    return [x for part in d.gather(list(items)) for x in part]
