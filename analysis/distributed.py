"""torch.distributed for ``torchrun ... caap bench``: NCCL on GPU, gloo on CPU; images sharded by rank."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` without it)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def init(device: str) -> tuple[int, int, str]:
    """Join the process group when launched by torchrun; returns ``(rank, world_size, device)`` with a
    CUDA device pinned to the local rank."""
    rank, size, local = world()
    if size > 1 and not dist.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank, size, device


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
