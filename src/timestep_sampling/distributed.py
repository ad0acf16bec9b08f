"""The few collectives the samplers and the trainer need. Every function is a no-op (or the identity)
when torch.distributed is not initialised, so library code calls them unconditionally."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, in rank order. Shapes may differ across ranks
    in dim 0 only."""
    if not is_distributed():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest,) + tuple(x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def all_reduce_mean_(x: torch.Tensor) -> torch.Tensor:
    """In-place mean of `x` over ranks."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= world_size()
    return x


def all_reduce_sum_(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def broadcast_(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    if is_distributed():
        dist.broadcast(x, src)
    return x


def local_rank() -> int:
    import os
    return int(os.environ.get("LOCAL_RANK", 0))


def setup() -> None:
    """Join the process group that torchrun describes in the environment (gloo for CPU tensors, nccl for
    GPU tensors: both where there is a GPU, so --device cpu works there too); nothing when run as a single
    plain process."""
    import os
    if is_distributed() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return
    backend = "gloo"
    if torch.cuda.is_available():
        backend = "cpu:gloo,cuda:nccl"
        if local_rank() < torch.cuda.device_count():
            torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()
