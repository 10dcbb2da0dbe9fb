"""Data-parallel helpers for torchrun (env:// rendezvous; NCCL on GPU, gloo on CPU).

Each process takes a contiguous share of every global batch; the generator and the
discriminator heads are each wrapped in ``torch.nn.parallel.DistributedDataParallel``
(``wrap_ddp``), which averages their gradients during the backward. The rest here is
what DDP does not do: joining the group, the device of a rank, rank-averaged scalars
for the log, gathering RNG states for the checkpoint.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_pref: str) -> DistInfo:
    """Join the torchrun group when WORLD_SIZE > 1 (or reuse an existing one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", "0")), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
        # NVLink SHARP (multicast) off unless the operator asks for it: the GPU hosts this
        # job was written for are shared and do not lend multicast objects (docs/training.md).
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    dist.init_process_group(backend=backend)
    info = DistInfo(dist.get_rank(), dist.get_world_size(), local, True)
    log.info("distributed: rank %d/%d (%s)", info.rank, info.world, backend)
    return info


def pick_device(pref: str, info: DistInfo) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    if pref == "cuda":
        return torch.device(f"cuda:{info.local_rank}")
    return torch.device(pref)


def wrap_ddp(module: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` in a process group, else ``module`` itself.

    DDP broadcasts rank 0's parameters when it wraps, and averages the gradients of the
    parameters that require them during each backward that follows a forward through the
    wrapper (bucketed all-reduce, overlapped with the backward). Buffers (the heads'
    spectral-norm vectors) are broadcast here once and not before every forward
    (``broadcast_buffers=False``): each rank updates them from the same weights, so they
    stay equal, and the per-forward broadcast slowed a tiny 2-process CPU step
    (lab/archive/training-history.md). ``gradient_as_bucket_view`` spares a copy.
    """
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    with torch.no_grad():
        for b in module.buffers():
            dist.broadcast(b, 0)
    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False,
                                   gradient_as_bucket_view=True)


def mean_scalars(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    if not info.enabled:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= info.world
    return dict(zip(keys, t.tolist(), strict=True))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
