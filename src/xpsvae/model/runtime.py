"""Where and how torch runs: the device a name means, torch's CPU thread count for a block
of work, the fused optimizer, and this process's rank in a distributed run. Shared by the
sVAE's trainer, the label heads and the catalogue's workers."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.distributed as dist

from ..core import machine


def distributed_rank_world() -> tuple:
    """(rank, world size) of a torchrun / DistributedDataParallel run; (0, 1) otherwise."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fused_optimizer(make: Callable[..., torch.optim.Optimizer], params: list,
                    required: bool = False) -> torch.optim.Optimizer:
    """``make(params, fused=True)``: one fused kernel per step instead of a dozen per-tensor
    loops. Small models spend ~10% of a CPU step in the optimizer otherwise
    (benchmarks/optimizer_step.py). Where the device or build has no fused kernels, the
    plain optimizer, unless ``required``."""
    try:
        return make(params, fused=True)
    except (RuntimeError, ValueError, TypeError):
        if required:
            raise
        return make(params)


@contextmanager
def torch_threads(n: int, idle: bool = False) -> Iterator[None]:
    """torch's CPU thread count set to ``n`` for a block, and put back after it.

    0 leaves it as it is or, with ``idle``, lowers it to the cores this process may use
    and other processes leave idle. torch counts the host's cores; a container's quota of
    fewer, or cores another process keeps busy, oversubscribed, crawl
    (benchmarks/threads_under_load.py: 2 threads beside one busy process on 2 cores ran
    10x slower than 1). The thread count does not change the numbers: the same weights
    either way."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    elif idle and (cores := min(machine.usable_cores(), machine.idle_cores())) < before:
        torch.set_num_threads(cores)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    """The device a name means; a bare ``cuda`` with its index, so that it compares equal to
    the device of the tensors placed on it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    return device
