"""Data parallelism of the training loop over ``torch.distributed`` (Ray Train initialises the process
group; with one worker every helper is a no-op): the same initial weights on every worker, gradients
averaged as DDP does, and rank 0's decisions shared.
"""

from __future__ import annotations

import torch


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def broadcast_parameters(model: torch.nn.Module, world: int) -> None:
    """Rank 0's parameters and buffers on every worker (in place)."""
    if world > 1:
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Mean of the gradients over workers (one flat all_reduce), as DDP does."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
        offset += g.numel()


def agree(flag: bool, world: int) -> bool:
    """Rank 0's decision for everyone (early stopping must not split the workers)."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)])
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())
