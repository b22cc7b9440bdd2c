"""Which process this is, on PyTorch's own distributed runtime (used by ``explain-dataset``, the
folder benchmark and ``finetune``).

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; the process group (gloo on CPU, nccl on GPU) is
initialised only when ``WORLD_SIZE`` > 1, so one plain process needs no ``torch.distributed`` at
all. Through :class:`Ranks`, processes exchange small Python objects (an error message, counts,
captions); dataset jobs pass their data through the file system, and ``finetune`` gathers tensors
with its own differentiable gather (``finetune/dist.py``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, List

import torch

#: How long a rank waits for the others at the final barrier: ranks finish at different times,
#: and torchrun ends the job if one of them dies.
BARRIER_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    """``rank`` of ``world`` processes; ``device`` this rank computes on; ``owns_group``: this
    module initialised the process group (and destroys it in :meth:`close`)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the process that writes shared files)."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: List[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self, sync: bool = True) -> None:
        """Destroy the process group this module made; ``sync``: once every rank is here (a rank
        leaving while another still reads its last message makes gloo abort that one). Not
        after an error on this rank alone: the others are in another collective."""
        if self.owns_group and torch.distributed.is_initialized():
            try:
                if sync:
                    torch.distributed.barrier()
            finally:
                torch.distributed.destroy_process_group()


def check_device(device: str) -> None:
    """Raises ValueError unless ``device`` is ``"auto"`` or a device this machine has (``cpu``,
    ``cuda``, ``cuda:K`` with CUDA available and K below its device count, ``mps``...)."""
    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:K") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: only cpu, cuda and mps are supported")


def init(device: str = "auto") -> Ranks:
    """This process' :class:`Ranks`: from an already initialised process group, from torchrun's
    environment (``WORLD_SIZE`` > 1: initialise gloo, or nccl when the device is a GPU), or a
    single process.

    Args:
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``), or a
            device string.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks(device=device)
    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if gpu else "gloo", timeout=BARRIER_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), device, owns_group=True)


@contextmanager
def session(device: str = "auto") -> Iterator[Ranks]:
    """``with session() as ranks:`` :func:`init`, then :meth:`Ranks.close` (in step with the other
    ranks after success, at once after an error)."""
    ranks = init(device)
    try:
        yield ranks
    except BaseException:
        ranks.close(sync=False)
        raise
    ranks.close()
