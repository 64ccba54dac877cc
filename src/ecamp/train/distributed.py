"""Process-group set-up under torchrun, and the few collectives the training loop needs.

Without torchrun (no ``WORLD_SIZE`` > 1 in the environment) everything here degrades to a
single process: ``world_size() == 1``, collectives return their input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ecamp.errors import UserError
from ecamp.utils.device import resolve_device  # noqa: F401  (its home; old path kept)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job and which device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (nccl on CUDA, gloo otherwise).

    Safe to call more than once: an already initialised group is reused.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank if world > 1 else 0)
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise UserError(
                "WORLD_SIZE > 1 but MASTER_ADDR/MASTER_PORT are unset; launch with torchrun"
            )
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def is_dist() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    """True on rank 0: the process that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_dist():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor | float) -> Any:
    """Mean over ranks of a tensor (returned as a tensor) or a float (returned as a float)."""
    if not is_dist():
        return value
    if isinstance(value, torch.Tensor):
        t = value.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / world_size()
    t = torch.tensor(float(value), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool) -> Any:
    """``model`` in DistributedDataParallel (one device per process on CUDA)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def cleanup() -> None:
    """Leave the process group (call once, at the end of a stage)."""
    if is_dist():
        # every rank must be done with its collectives first: gloo aborts a process whose
        # peer tears the group down under it ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
