"""torch.distributed helpers: one process (nothing to set up) or `torchrun` (env:// rendezvous).

NCCL on CUDA, gloo on CPU. Only rank 0 writes files; metrics are gathered across ranks. Also: the process
group's lifetime (`process_group_scope`), per-rank RNG states for checkpoints (`rng_state`, `restore_rng`) and
the check that every rank resumed the same state (`check_same_state`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


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
    return max_over_ranks(1.0 if flag else 0.0, device) > 0


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest of `value` over the ranks (`value` itself without distributed): one figure every rank decides
    from, such as the training time that the time budget and a time-based schedule read. A collective."""
    if not is_dist():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group_scope() -> Iterator[None]:
    """Destroy the process group joined inside the block (e.g. by `Trainer` under torchrun) when the block
    ends, also on an error; a group that existed before the block is left alone. On an error, a failure to
    destroy the group does not hide the original error. At a normal end the ranks first meet at a barrier, so
    that none leaves while another still works (rank 0 draws the final figures alone): under torchrun a rank
    that left early was seen to abort at exit ("terminate called without an active exception")."""
    existed = is_dist()
    try:
        yield
    except BaseException:
        if not existed:
            with contextlib.suppress(Exception):
                cleanup()
        raise
    if not existed:
        barrier()
        cleanup()


# --------------------------------------------------------------------------- per-rank RNG states
_NUMPY_KEYS, _PYTHON_WORDS = 624, 625  # MT19937 state sizes: numpy's key, python's internal state (+ index)


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's RNG states as checkpoint-safe values (tensors, numbers, strings, None): torch's CPU
    generator, the CUDA generator of `device` (None unless `device` is CUDA), numpy's global one and
    python's `random`."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    cuda = torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore what `rng_state` returned; an entry that is missing or None is left as it is (the CUDA one
    also when `device` is not CUDA)."""
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state.get("numpy")
    if n is not None:
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state.get("python")
    if p is not None:
        random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss_next"]))


def seed_all(seed: int) -> None:
    """Seed python's `random`, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(base: Mapping[str, Any], rank: int) -> int:
    """The seed of a rank that has no saved state of its own: the first 8 bytes (little-endian) of
    SHA-256(rank 0's saved torch CPU state, then "rank <rank>"). Ranks get different seeds, and resuming the
    same checkpoint at the same world size twice gives the same ones."""
    h = hashlib.sha256()
    if base.get("torch") is not None:
        h.update(base["torch"].numpy().tobytes())
    h.update(f"rank {rank}".encode())
    return int.from_bytes(h.digest()[:8], "little")


def pick_rng_state(states: Sequence[Mapping[str, Any]], saved_world_size: int, rank: int,
                   world_size: int) -> Mapping[str, Any] | int:
    """What rank `rank` of `world_size` restores from a checkpoint's per-rank RNG `states`, saved by
    `saved_world_size` ranks: its own rank's state when the world size is unchanged; otherwise rank 0 takes
    rank 0's state and every other rank a seed derived from it (`derived_seed`). Returns a state or a seed."""
    same_world = saved_world_size == world_size and len(states) == world_size
    if rank == 0 or (same_world and rank < len(states)):
        return states[rank]
    return derived_seed(states[0], rank)


def restore_rng(states: Sequence[Mapping[str, Any]], saved_world_size: int, info: DistInfo) -> None:
    """Set this rank's RNGs from a checkpoint's per-rank `states` (the rule: `pick_rng_state`)."""
    picked = pick_rng_state(states, saved_world_size, info.rank, info.world_size)
    if isinstance(picked, int):
        seed_all(picked)
    else:
        set_rng_state(picked, info.device)


def rng_states_problem(states: Any) -> str | None:
    """Why `states` (a checkpoint's "rng": one `rng_state` per rank) cannot be restored, or None."""
    if not isinstance(states, list | tuple) or not states:
        return "'rng' is not a non-empty list of per-rank RNG states"
    torch_size = torch.get_rng_state().numel()
    for r, s in enumerate(states):
        where = f"'rng'[{r}]"
        if not isinstance(s, Mapping):
            return f"{where} is a {type(s).__name__}, not a mapping"
        for key in ("torch", "cuda"):
            v = s.get(key)
            if v is not None and not (isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.dim() == 1):
                return f"{where}['{key}'] is not a uint8 tensor"
        if s.get("torch") is not None and s["torch"].numel() != torch_size:
            return f"{where}['torch'] has {s['torch'].numel()} bytes, not {torch_size}"
        n = s.get("numpy")
        if n is not None and not (isinstance(n, Mapping) and isinstance(n.get("name"), str)
                                  and _words(n.get("keys"), _NUMPY_KEYS) and _int(n.get("pos"), _NUMPY_KEYS)
                                  and _int(n.get("has_gauss"), 1) and isinstance(n.get("gauss"), float)):
            return f"{where}['numpy'] is malformed"
        p = s.get("python")
        if p is not None and not (isinstance(p, Mapping) and _int(p.get("version"), 2**31)
                                  and _words(p.get("state"), _PYTHON_WORDS)
                                  and (p.get("gauss_next") is None or isinstance(p.get("gauss_next"), float))):
            return f"{where}['python'] is malformed"
    return None


def _words(v: Any, n: int) -> bool:
    """An int64 tensor of `n` values in [0, 2**32)."""
    return (isinstance(v, torch.Tensor) and v.dtype == torch.int64 and v.dim() == 1 and v.numel() == n
            and bool((v >= 0).all()) and bool((v < 2**32).all()))


def _int(v: Any, top: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= top


# --------------------------------------------------------------------------- the same state on every rank
def state_fingerprint(model: torch.nn.Module, **counters: Any) -> dict[str, Any]:
    """`counters` plus a digest of `model`'s state dict (names, dtypes, shapes and bytes): two ranks have
    equal fingerprints iff they hold the same weights and counters."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {**counters, "weights": h.hexdigest()[:16]}


def check_ranks_agree(fingerprints: Sequence[Mapping[str, Any]]) -> None:
    """UserError (one line) unless every rank's fingerprint equals rank 0's; names the ranks that differ
    and what they hold."""
    differ = [r for r, fp in enumerate(fingerprints) if fp != fingerprints[0]]
    if not differ:
        return
    shown = "; ".join(f"rank {r}: " + ", ".join(f"{k} {v}" for k, v in fingerprints[r].items())
                      for r in [0, *differ[:3]])
    more = f"; {len(differ) - 3} more ranks differ" if len(differ) > 3 else ""
    raise UserError(f"the ranks start from different training states ({shown}{more}): every rank must resume "
                    "from the same checkpoint (without a shared file system, copy the run folder with its "
                    "last.pt to every node)")


def check_same_state(model: torch.nn.Module, **counters: Any) -> None:
    """Compare every rank's `state_fingerprint(model, **counters)` with rank 0's and raise on every rank if
    one differs (a collective; nothing without distributed). Catches a multi-node run without a shared file
    system, where rank 0 resumed and the others started fresh or from another checkpoint."""
    if is_dist():
        check_ranks_agree(all_gather_objects(state_fingerprint(model, **counters)))
