"""torch.distributed helpers: one process (nothing to set up) or `torchrun` (env:// rendezvous).

NCCL on CUDA, gloo on CPU. Only rank 0 writes files; metrics are gathered across ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick the device.

    `device`: "cpu", "cuda", "cuda:1"... or None for CUDA when available. Under torchrun each process takes
    the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        dev = torch.device("cuda", local_rank) if world > 1 or want == "cuda" else torch.device(want)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(want)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend=backend)
        else:
            # torchrun keeps one store across elastic restarts (--max-restarts): the previous round's peer
            # addresses are still in it, and a restarted rank may read a dead peer's address before its
            # replacement overwrites it ("connectFullMesh failed ... Connection refused", seen here in 1 of 3
            # restarts; pytorch/pytorch#167288 reports the NCCL form). A key prefix per round avoids that.
            store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world))
            store = dist.PrefixStore(f"dynamic_detr/round{restart}", store)
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list without distributed)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Mean of scalar values across ranks (identity without distributed)."""
    if not is_dist() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank (so that all ranks take the same branch)."""
    if not is_dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
