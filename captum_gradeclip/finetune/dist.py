"""Distributed helpers: set-up from ``torchrun``'s environment and gathering rows with gradients.

Every process computes the loss of the *global* batch: embeddings are gathered from all processes
(:func:`gather_rows`, differentiable: the backward sums the gradients of every process' copy of
the loss and returns each process its own rows). Each process' gradient is then ``world`` times its
share, and ``DistributedDataParallel``'s average makes it the single-process gradient of the
global batch exactly (up to floating-point order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup() -> Dist:
    """One process (no ``WORLD_SIZE`` or 1), or join ``torchrun``'s group: nccl when CUDA is there
    (one GPU per local rank), else gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def teardown(d: Dist) -> None:
    """Leave the process group (if this run joined one)."""
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


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


def gather_rows(x: Tensor, d: Dist) -> Tensor:
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


def gather_objects(items: List[Any], d: Dist) -> List[Any]:
    """Concatenate each process' list (e.g. captions), in rank order."""
    if d.world == 1:
        return list(items)
    out: List[Any] = [None] * d.world
    dist.all_gather_object(out, list(items))
    return [x for part in out for x in part]


def barrier(d: Dist) -> None:
    """Wait for every process (no-op for one)."""
    if d.world > 1:
        dist.barrier()
