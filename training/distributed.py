"""Process-group set-up under `torchrun` (env://) and the collectives the loss needs."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistEnv:
    """Joins the process group when started by torchrun (WORLD_SIZE > 1); else a single process.

    Backend: nccl on CUDA, gloo on CPU. `device` forces "cpu" or "cuda"; default: CUDA if present.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return DistEnv(rank, local_rank, world_size, target)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def gather_features(features: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """All ranks' features, rank order, with gradient flowing only into this rank's slice.

    Every rank then computes the same global loss; scaling it by the world size before backward
    makes DDP's gradient *average* equal the single-process gradient of that loss.
    """
    if not env.distributed:
        return features
    gathered = [torch.empty_like(features) for _ in range(env.world_size)]
    dist.all_gather(gathered, features.detach().contiguous())
    gathered[env.rank] = features
    return torch.cat(gathered)


def gather_objects(items: list, env: DistEnv) -> list:
    """Concatenates a per-rank Python list across ranks (rank order)."""
    if not env.distributed:
        return list(items)
    everyone: list = [None] * env.world_size
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]


def all_reduce_mean(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / env.world_size
