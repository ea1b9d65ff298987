"""Distributed data-parallel training under ``torchrun`` (PyTorch's own engine).

``maskwatch train`` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE). With WORLD_SIZE > 1 it joins a process group (NCCL on GPUs, gloo on
CPU), wraps the model in DistributedDataParallel, gives each rank a disjoint shard of
every epoch's sample order, sums the metrics over the ranks, and lets only rank 0 write
files and logs. With one process none of this is used and nothing changes.

``bench_distributed`` measures training images/s with 1 and 2 processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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


# ------------------------------------------------------------------------ benchmark


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench_data(root: Path, per_class: int = 64, size: int = 48) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("with_mask", "without_mask"):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            if label == "with_mask":
                img[size // 2:] = 220
            Image.fromarray(img).save(folder / f"{i}.png")
    return root


def bench_distributed(seconds: float = 10.0, model: str = "seed_cnn128", input_size: int = 64,
                      batch: int = 32) -> dict:
    """Training images/s of ``maskwatch train`` under torchrun with 1 and with 2 processes.

    Same generated data and per-process batch in both; the run's own epoch timing is used
    (decoding and process start-up excluded). ``seconds`` sets roughly how long each run
    trains. On CPU the machine's threads are split between the processes.
    """
    rates: dict = {}
    with tempfile.TemporaryDirectory(prefix="maskwatch-ddp-bench-") as tmp:
        tmp_path = Path(tmp)
        data = _bench_data(tmp_path / "data")
        for procs in (1, 2):
            out = tmp_path / f"run{procs}"
            epochs = 1 + max(1, round(seconds / 2))
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                "-m", "maskwatch", "train", "--data", str(data), "--out", str(out),
                "--model", model, "--input-size", str(input_size), "--batch-size", str(batch),
                "--epochs", str(epochs), "--val-fraction", "0", "--patience", "0",
                "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--workers", "1",
                "--augment", "standard",
            ]
            env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
            start = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=max(120.0, 20 * seconds))
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise MaskwatchError(f"torchrun with {procs} process(es) failed: "
                                     + " | ".join(tail))
            history = json.loads((out / "metrics.json").read_text())
            # first epoch includes warm-up (allocations, gloo connection): leave it out
            timed = history[1:] or history
            images = sum(r["train_images_per_s"] * r["train_seconds"] for r in timed)
            secs = sum(r["train_seconds"] for r in timed)
            rates[f"processes_{procs}"] = round(images / max(secs, 1e-9), 1)
            rates[f"wall_seconds_{procs}"] = round(time.perf_counter() - start, 1)
    rates["speedup"] = round(rates["processes_2"] / max(rates["processes_1"], 1e-9), 2)
    rates.update(model=model, input_size=input_size, batch_per_process=batch,
                 cpu_count=os.cpu_count())
    return rates
