"""Distributed data-parallel training under ``torchrun`` (PyTorch's own engine).

``maskwatch train`` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE). With WORLD_SIZE > 1 it joins a process group (NCCL on GPUs, gloo on
CPU), wraps the model in DistributedDataParallel, gives each rank a disjoint shard of
every epoch's sample order, sums the metrics over the ranks, and lets only rank 0 write
files and logs. With one process none of this is used and nothing changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from maskwatch.errors import MaskwatchError

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise MaskwatchError(f"environment variable {name}={value!r} is not an integer") from None


@dataclass
class DistEnv:
    """Where this process stands in a (possibly one-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: object = None  # torch.device, set by ``init``

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls) -> DistEnv:
        """Read torchrun's variables; without them: one process, rank 0."""
        world = _env_int("WORLD_SIZE", 1)
        rank = _env_int("RANK", 0)
        local_rank = _env_int("LOCAL_RANK", 0)
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
            raise MaskwatchError(
                f"inconsistent torchrun variables: RANK={rank} WORLD_SIZE={world} "
                f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}"
            )
        return cls(rank, world, local_rank, max(local_world, 1))

    # ------------------------------------------------------------------ collectives

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self.device is not None and self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_sum(self, values) -> np.ndarray:
        """Element-wise sum of a float vector over all ranks (as float64)."""
        arr = np.asarray(values, dtype=np.float64)
        if not self.distributed:
            return arr
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(arr.copy()).to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def sync_buffers(self, model) -> None:
        """Make the model's buffers (batch-norm statistics) equal on every rank.

        Each rank updates its running statistics on its own batches; after an epoch the
        floating-point buffers are averaged over the ranks (the others taken from rank 0),
        so validation and the saved checkpoint see the same model everywhere.
        """
        if not self.distributed:
            return
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for buf in model.buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                    buf.div_(self.world_size)
                else:
                    dist.broadcast(buf, src=0)

    def main_first(self, fn: Callable[[bool], T]) -> T:
        """Run ``fn(True)`` on rank 0; once it succeeded, ``fn(False)`` on the other ranks.

        Used for work that must happen once (create the run folder, decode the image
        cache, fetch weights): the other ranks then read what rank 0 left. If rank 0
        fails, the others stop with a one-line error instead of waiting forever.
        """
        if not self.distributed:
            return fn(True)
        failed = 0.0
        result = None
        if self.is_main:
            try:
                result = fn(True)
            except BaseException:
                self.all_reduce_sum([1.0])
                raise
        if self.all_reduce_sum([failed])[0] > 0:
            raise MaskwatchError(f"rank {self.rank}: stopped because rank 0 failed (see its error)")
        if not self.is_main:
            result = fn(False)
        return result

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def init(device_choice: str = "auto", threads: int = 0) -> DistEnv:
    """Read torchrun's environment, pick the device, split CPU threads, join the group.

    ``threads`` is the CPU thread budget of one machine (0: its cores); with several
    processes per machine each gets ``threads // LOCAL_WORLD_SIZE`` (at least 1).
    One process: only ``--threads`` when given, exactly as before.
    """
    import torch

    env = DistEnv.from_environ()
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise MaskwatchError("--device cuda: no CUDA device is available")
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if use_cuda and env.distributed:
        if env.local_rank >= torch.cuda.device_count():
            raise MaskwatchError(
                f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} CUDA "
                "device(s): start at most one process per GPU"
            )
        torch.cuda.set_device(env.local_rank)
        env.device = torch.device("cuda", env.local_rank)
    else:
        env.device = torch.device("cuda" if use_cuda else "cpu")
    if env.distributed:
        budget = threads if threads and threads > 0 else (len(os.sched_getaffinity(0))
                                                          if hasattr(os, "sched_getaffinity")
                                                          else os.cpu_count() or 1)
        torch.set_num_threads(max(1, budget // env.local_world_size))
    elif threads and threads > 0:
        torch.set_num_threads(threads)
    if env.distributed:
        import torch.distributed as dist

        if not dist.is_available():
            raise MaskwatchError("this torch build has no torch.distributed")
        backend = "nccl" if env.device.type == "cuda" else "gloo"
        if backend == "gloo" and not dist.is_gloo_available():
            raise MaskwatchError("torch.distributed has no gloo back-end for CPU training")
        kwargs = {"device_id": env.device} if env.device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return env


def shard_order(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's part of an epoch's sample order: positions rank, rank+W, ...

    The order is first cut to a multiple of W (at most W-1 samples of the epoch are left
    out; which ones changes every epoch), so the shards are disjoint and of equal length:
    every rank runs the same number of steps, as DistributedDataParallel needs.
    """
    if world_size <= 1:
        return order
    usable = len(order) - len(order) % world_size
    return order[:usable][rank::world_size]


def wrap_model(model, env: DistEnv):
    """DistributedDataParallel around ``model`` (already on ``env.device``), or ``model``."""
    if not env.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
