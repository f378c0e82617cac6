"""torchrun / DDP plumbing: read the launcher's environment, pick the backend, shut down cleanly,
and launch a script as N ranks from Python.

One code path for 1 process and N processes: without RANK in the environment everything degrades
to a single process (no process group).
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def setup(device: str) -> DistContext:
    """Initialise the process group when launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK set)."""
    if "RANK" not in os.environ:
        return DistContext(device=_resolve_device(device, 0))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    resolved = _resolve_device(device, local_rank)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank, world, local_rank, resolved)


def launch(script_args: list[str], processes: int, threads: int = 1) -> int:
    """Run ``python <script_args>`` as ``processes`` ranks through torch's launcher (a standalone
    rendezvous on this machine), each with ``threads`` torch threads; returns the exit status."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", *script_args]
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode


def _resolve_device(device: str, local_rank: int) -> torch.device:
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda was requested but no CUDA device is available; "
                               "use --device=cpu")
        resolved = torch.device("cuda", local_rank if resolved.index is None else resolved.index)
        torch.cuda.set_device(resolved)
    return resolved


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_mean(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= ctx.world_size
    return values


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank if it is true on any: ranks must agree on when to stop."""
    if not ctx.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())
