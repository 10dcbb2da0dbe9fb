"""Data-parallel helpers for torchrun (env:// rendezvous; NCCL on GPU, gloo on CPU).

Each process takes a contiguous share of every global batch; after each backward the
gradients of a model are averaged with one flat all-reduce (what DistributedDataParallel
does, done explicitly because the generator's loss back-propagates through the
discriminator heads and the two models step in turn).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
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


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average .grad of ``params`` over the group with one flat all-reduce."""
    if not info.enabled:
        return
    ps = [p for p in params if p.requires_grad]
    if not ps:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in ps]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat)
    flat /= info.world
    off = 0
    for p in ps:
        n = p.numel()
        p.grad = flat[off : off + n].view_as(p).to(p.dtype)
        off += n


def broadcast_params(modules: Sequence[torch.nn.Module], info: DistInfo) -> None:
    """Make every rank start from rank 0's trainable weights and buffers."""
    if not info.enabled:
        return
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                if p.requires_grad:
                    dist.broadcast(p.data, 0)
            for b in m.buffers():
                if b.is_floating_point():
                    dist.broadcast(b, 0)


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
